"""The loader of cached kernels (kernels/elf.py): it links an object file the way LLVM's JIT
engine does -- code, constants, writable data, calls into the C library -- and refuses what
it does not know, so that the LLVM engine takes over."""
import ctypes

import pytest

from tinymvit.kernels import elf, native

llvm = pytest.importorskip("llvmlite.binding")
pytestmark = pytest.mark.skipif(not elf.supported(), reason="the ELF loader is for Linux x86-64")

# a constant table (.lrodata), a counter the code writes (.lbss), a call to memset (libc)
IR = r"""
@table = private unnamed_addr constant [4 x float] [float 1.5, float 2.5, float 3.5, float 4.5]
@count = internal global i64 0
declare ptr @memset(ptr, i32, i64)
define float @probe(ptr %buf, i64 %i) {
  call ptr @memset(ptr %buf, i32 7, i64 16)
  %c = load i64, ptr @count
  %c1 = add i64 %c, 1
  store i64 %c1, ptr @count
  %p = getelementptr [4 x float], ptr @table, i64 0, i64 %i
  %v = load float, ptr %p
  %f = sitofp i64 %c1 to float
  %r = fadd float %v, %f
  ret float %r
}
"""
PROBE = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_void_p, ctypes.c_int64)


def _object(code_model, name="probe"):
    """The object file of IR, its function named ``name``."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    tm = llvm.Target.from_default_triple().create_target_machine(codemodel=code_model)
    return tm.emit_object(llvm.parse_assembly(IR.replace("@probe", f"@{name}")))


def test_the_loader_links_constants_data_and_library_calls():
    """Numba's objects use the large code model (absolute 64-bit addresses everywhere)."""
    results = {}
    for engine in ("elf", "llvm"):
        name = f"probe_{engine}"           # LLVM's engine aborts on two functions of one name
        obj = _object("large", name)
        if engine == "elf":
            address = elf.load_function(obj, name, native.runtime_symbols().get)
        else:
            address = native.load_code(obj, name, engine="llvm")
        probe, buf = PROBE(address), (ctypes.c_uint8 * 16)()
        results[engine] = [probe(buf, 2), probe(buf, 3), probe(buf, 0)]
        assert list(buf) == [7] * 16                      # memset ran
    # table[i] + how many times this copy of the code ran (its own writable counter)
    assert results["elf"] == results["llvm"] == [3.5 + 1, 4.5 + 2, 1.5 + 3]


def test_what_the_loader_does_not_know_goes_to_llvm():
    obj = _object("large")
    with pytest.raises(elf.Unsupported, match="not a little-endian 64-bit ELF"):
        elf.load_function(b"MZ" + bytes(100), "probe", lambda name: None)
    with pytest.raises(elf.Unsupported, match="unknown symbol memset"):
        elf.load_function(obj, "probe", lambda name: None)
    with pytest.raises(elf.Unsupported, match="no function nothing"):
        elf.load_function(obj, "nothing", native.runtime_symbols().get)
    small = _object("default")          # 32-bit absolute addresses: never guessed at
    with pytest.raises(elf.Unsupported, match="relocation type"):
        elf.load_function(small, "probe", native.runtime_symbols().get)
    arm = bytearray(obj)
    arm[18:20] = (183).to_bytes(2, "little")              # e_machine: AArch64
    with pytest.raises(elf.Unsupported, match="machine 183"):
        elf.load_function(bytes(arm), "probe", native.runtime_symbols().get)
