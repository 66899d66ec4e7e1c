"""Loading a compiled kernel's object file into memory, without LLVM: a tiny linker.

The cached kernels (``native.py``) are ELF object files, as LLVM writes them for
x86-64 with the *large* code model: every reference from one place to another
-- a call to ``memset``, a constant in ``.rodata`` -- is a 64-bit absolute address
that the loader writes into the code (relocation ``R_X86_64_64``).  So loading
one is short work::

    lay the sections that occupy memory (.ltext, .lrodata, ...) out in one block
    for each relocation: write (address of its symbol + addend) at its place
    make the block executable; the function's address is its symbol's

which spares every process the LLVM library (~50 ms to import and ~48 MB of
memory; its JIT engine is used instead when this loader cannot do the work:
another object format, CPU or relocation kind -- :class:`Unsupported`).
Unwinding tables (``.eh_frame``) are not loaded: no exception crosses a kernel.
"""
import ctypes
import mmap
import os
import struct
import sys


class Unsupported(Exception):
    """This loader cannot load the object file (the LLVM engine can)."""


# ELF constants (System V ABI, x86-64 supplement)
SHF_WRITE, SHF_ALLOC = 0x1, 0x2
SHT_RELA, SHT_NOBITS, SHT_SYMTAB = 4, 8, 2
SHN_UNDEF, SHN_ABS, SHN_LORESERVE = 0, 0xFFF1, 0xFF00
R_X86_64_64, R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_PC64 = 1, 2, 4, 24
SECTION = struct.Struct("<IIQQQQIIQQ")   # name type flags addr offset size link info align entsize
SYMBOL = struct.Struct("<IBBHQQ")        # name info other shndx value size
RELA = struct.Struct("<QQq")             # offset info addend
SKIPPED = (".eh_frame",)                 # unwinding tables (and their relocations)

_BLOCKS = []   # the loaded blocks stay mapped for the life of the process


def supported():
    """Whether this platform can use the loader at all (Linux on x86-64)."""
    return sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "AMD64")


def load_function(code, symbol, resolve):
    """Load the ELF object ``code`` (bytes) and return the address of function ``symbol``.

    ``resolve(name)``: the address of a symbol the object uses but does not define
    (or None).  Raises :class:`Unsupported` if the object is not one this loader knows.
    """
    if not supported() or code[:4] != b"\x7fELF" or code[4] != 2 or code[5] != 1:
        raise Unsupported("not a little-endian 64-bit ELF object on Linux x86-64")
    e_type, e_machine = struct.unpack_from("<HH", code, 16)
    if e_type != 1 or e_machine != 62:
        raise Unsupported(f"ELF type {e_type}, machine {e_machine}: want a relocatable x86-64")
    shoff, = struct.unpack_from("<Q", code, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", code, 0x3A)
    sections = [SECTION.unpack_from(code, shoff + i * shentsize) for i in range(shnum)]

    def name_at(table, offset):
        start = sections[table][4] + offset
        return code[start:code.index(b"\0", start)].decode()

    names = [name_at(shstrndx, s[0]) for s in sections]

    # 1. the layout: every section that occupies memory, aligned, one after another: code
    #    and constants first, then (from a page boundary on) data the code may write
    place, size, fixed = {}, 0, 0
    for writable in (False, True):
        if writable:
            size = fixed = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        for i, (_, kind, flags, _, _, length, _, _, align, _) in enumerate(sections):
            if (flags & SHF_ALLOC and names[i] not in SKIPPED
                    and bool(flags & SHF_WRITE) == writable):
                size = -(-size // max(align, 1)) * max(align, 1)
                place[i] = size
                size += length
    block = mmap.mmap(-1, max(size, 1), prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(block))
    for i, offset in place.items():
        s = sections[i]
        if s[1] != SHT_NOBITS:                         # .bss stays zero
            block[offset:offset + s[5]] = code[s[4]:s[4] + s[5]]

    # 2. the symbols' addresses
    symtab = next((i for i, s in enumerate(sections) if s[1] == SHT_SYMTAB), None)
    if symtab is None:
        raise Unsupported("no symbol table")
    strtab, entsize = sections[symtab][6], sections[symtab][9] or SYMBOL.size
    symbols = []
    for k in range(sections[symtab][5] // entsize):
        st_name, _, _, shndx, value, _ = SYMBOL.unpack_from(code, sections[symtab][4] + k * entsize)
        name = name_at(strtab, st_name)
        if shndx == SHN_UNDEF:
            address = resolve(name) if name else 0
            if name and not address:
                raise Unsupported(f"unknown symbol {name}")
        elif shndx == SHN_ABS:
            address = value
        elif shndx < SHN_LORESERVE and shndx in place:
            address = base + place[shndx] + value
        else:
            address = None                             # in a section not loaded (unwinding)
        symbols.append((name, address))

    # 3. the relocations of the loaded sections
    for s in sections:
        if s[1] != SHT_RELA or s[7] not in place:
            continue
        target = place[s[7]]
        for k in range(s[5] // RELA.size):
            offset, info, addend = RELA.unpack_from(code, s[4] + k * RELA.size)
            kind, (name, address) = info & 0xFFFFFFFF, symbols[info >> 32]
            if address is None:
                raise Unsupported(f"relocation against {name or 'a section'} not loaded")
            where = base + target + offset
            if kind == R_X86_64_64:
                struct.pack_into("<Q", block, target + offset, (address + addend) % 2**64)
            elif kind == R_X86_64_PC64:
                struct.pack_into("<q", block, target + offset, address + addend - where)
            elif kind in (R_X86_64_PC32, R_X86_64_PLT32):
                value = address + addend - where
                if not -2**31 <= value < 2**31:
                    raise Unsupported(f"{name} is out of reach of a 32-bit relative address")
                struct.pack_into("<i", block, target + offset, value)
            else:
                raise Unsupported(f"relocation type {kind}")

    # 4. code and constants executable, never writable again
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if fixed and libc.mprotect(base, fixed, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        raise Unsupported(f"mprotect: {os.strerror(ctypes.get_errno())}")
    _BLOCKS.append(block)
    address = dict(symbols).get(symbol)
    if not address:
        raise Unsupported(f"no function {symbol}")
    return address
