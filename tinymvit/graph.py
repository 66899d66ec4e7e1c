"""The static graph: a list of nodes, built once from the config, planned per input shape.

A model builder (``tinymvit/models/*.py``) calls :class:`GraphBuilder` methods
(``conv``, ``group_norm``, ``unfold``...) that check and prepare the weights and
append one :class:`Node` per layer.  Tensors are named by strings; the builder
tracks their channel counts so every weight shape can be checked.  At the end,
chains ``1x1 -> depthwise -> 1x1`` are fused into one node (:func:`fuse_separable`)
and every weight is packed into one flat array, the weight arena ``W``.

For each input shape (and thread count) a :class:`Plan` infers every tensor's shape
(padding included: TF-"SAME" padding depends on the input size), gives each tensor
a place in one flat float32 activation arena ``A`` (a place is reused once its
tensor is dead), and asks each node for its kernel calls.  Those become a
*program* (``kernels.program``): one table of ops that a single parallel Numba
kernel runs, so a forward pass costs one call into compiled code.  (The few
layers that have no kernel of their own -- concatenation, rare activations,
bilinear resizing of odd maps -- run as NumPy steps between program segments.)
Plans are cached per input shape (the most recent few) and kept in a small pool,
so several threads can run the same model at once without sharing buffers.

All activations are NHWC float32: (N, H, W, C) maps, (N, P, T, C) patch tokens,
(N, C) vectors.
"""
import collections
import math
import threading
import time
from collections import namedtuple

import numpy as np

from .errors import InputError
from .kernels import activations as act_mod
from .kernels import (attention_mha, attention_separable, batchnorm, conv, depthwise, layout,
                      native, norm, patches, pointwise, pooling, program, resize, workers)


class InputTooSmall(InputError):
    """Raised while planning when a feature map becomes too small for a layer."""


class NonFiniteInput(InputError):
    """Raised by :meth:`Graph.run` when the input holds NaN or infinite values."""

    def __init__(self):
        super().__init__("the input holds NaN or infinite values")


UnusedLayer = namedtuple("UnusedLayer", "name input act tensors cin cout in_checkpoint")
UnusedLayer.__doc__ = """A 1x1 conv layer (BN, ``act``) reading tensor ``input`` that transformers
computes but nothing reads, so tinymvit does not run it (listed by summaries); its weights
may be missing from the checkpoint (``in_checkpoint``)."""

Tensor = namedtuple("Tensor", "off shape")
Tensor.__doc__ = "A tensor of a plan: its offset in the activation arena and its shape."


def view(A, t):
    """The NumPy view of tensor ``t`` in arena ``A``."""
    return A[t.off:t.off + math.prod(t.shape)].reshape(t.shape)


def _copy_out(a, nchw):
    """A copy of ``a``: as it is, or -- a 4-D map when ``nchw`` -- as a contiguous
    (N, C, H, W) array, transposed in the same pass."""
    if nchw and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))                 # (N, C, H, W)
    return a.copy()


# ----------------------------------------------------------------------------------------
# Nodes.  ``infer`` maps input shapes to (output shape, static args) for one input size;
# ``steps`` returns the node's work for a plan: kernel ops (``program.Op``) and, rarely,
# NumPy steps (functions of the arena A).
# ----------------------------------------------------------------------------------------
class Node:
    """A layer: ``name`` (its checkpoint name), input and output tensor names.

    The builder sets ``tensors``, the (checkpoint tensor, shape) pairs its weights come
    from, and ``torch_names``, the transformers modules whose output equals its own.
    """
    tensors, torch_names = (), ()

    def __init__(self, name, inputs, output):
        self.name, self.inputs, self.output = name, tuple(inputs), output

    def infer(self, shapes):
        raise NotImplementedError

    def place(self, arena):
        """Put this node's weights into the weight arena (once, when the graph is built)."""

    def attach(self, W):
        """Called once the weight arena ``W`` is built (nodes may keep views into it)."""

    def scratch_size(self, in_shapes, out_shape, args, threads):
        """Floats of private scratch memory one run needs (0: none)."""
        return 0

    def steps(self, ins, out, args, scratch, threads):
        """The node's work on tensors ``ins`` -> ``out`` (Tensors); ``scratch``: a Tensor."""
        raise NotImplementedError

    def reference(self, xs, out_shape, args):
        """The node's output computed with the kernels' NumPy references (the NumPy backend):
        ``xs`` the input arrays, ``out_shape`` and ``args`` what :meth:`infer` gave."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.name}: {', '.join(self.inputs)} -> {self.output})"


class ToNHWC(Node):
    """pixel_values (N, C, H, W) -> (N, H, W, C)."""

    def infer(self, shapes):
        n, c, h, w = shapes[0]
        return (n, h, w, c), None

    def steps(self, ins, out, args, scratch, threads):
        return [layout.nchw_to_nhwc_op(ins[0].off, ins[0].shape, out.off)]

    def reference(self, xs, out_shape, args):
        return layout.nchw_to_nhwc_reference(xs[0])                         # (N, H, W, C)


def _conv_geometry(n, k, stride, dilation, padding):
    """(pad_before, output size) along one axis for 'symmetric' or 'tf_same' padding."""
    if padding == "tf_same":
        before, after = conv.tf_same_pads(n, k, stride, dilation)
    else:
        before, after = conv.symmetric_pads(k, dilation)
    return before, conv.conv_out_size(n, k, stride, dilation, before, after)


class Conv(Node):
    """Convolution with batch norm folded in, bias, activation and residual fused.

    kind: 'pointwise' (1x1, any leading dims), 'depthwise' or 'full' (k x k).
    """

    def __init__(self, name, inputs, output, kind, weight, bias, k, stride, dilation, padding,
                 act):
        super().__init__(name, inputs, output)
        self.kind, self.k, self.stride, self.dilation = kind, k, stride, dilation
        self.padding, self.act = padding, act
        self.nchw_input = False          # reads the NCHW model input itself (read_input_in_place)
        self.cout = weight.shape[0]
        prepare = {"pointwise": pointwise.prepare_pointwise_weight,
                   "depthwise": depthwise.prepare_depthwise_weight,
                   "full": conv.prepare_conv_weight}[kind]
        self.weight, self.bias = prepare(weight), np.ascontiguousarray(bias, np.float32)

    def place(self, arena):
        packed = self.weight.blocks if self.kind == "depthwise" else self.weight.panels
        self.w_off, self.b_off = arena.add(packed), arena.add(self.bias)

    def attach(self, W):
        """Keep views into the built weight arena instead of private copies."""
        def in_arena(a, off):
            return W[off:off + a.size].reshape(a.shape)
        if self.kind == "depthwise":
            self.weight = self.weight._replace(blocks=in_arena(self.weight.blocks, self.w_off))
        else:
            self.weight = self.weight._replace(panels=in_arena(self.weight.panels, self.w_off))
        self.bias = in_arena(self.bias, self.b_off)

    def infer(self, shapes):
        x = self.input_shape(shapes[0])
        if self.kind == "pointwise":
            return x[:-1] + (self.cout,), None
        n, h, w, _ = x
        top, ho = _conv_geometry(h, self.k, self.stride, self.dilation, self.padding)
        left, wo = _conv_geometry(w, self.k, self.stride, self.dilation, self.padding)
        if ho < 1 or wo < 1:
            raise InputTooSmall(f"{self.name}: a {h}x{w} map gives an empty output")
        return (n, ho, wo, self.cout), (top, left)

    def input_shape(self, shape):
        """The input's shape as (N, H, W, C), also when it is the NCHW model input."""
        if self.nchw_input:
            n, c, h, w = shape
            return (n, h, w, c)
        return shape

    def fused_act(self):
        """The activation the kernel applies (ReLU/ReLU6/SiLU; the rare ones: a separate step)."""
        return self.act if self.act <= act_mod.MAX_FUSED else act_mod.ACT_NONE

    def kernel_op(self, x, out, args, threads, r_off=None):
        """This conv as one kernel op from Tensor x to Tensor out (+ A[r_off])."""
        act = self.fused_act()
        if self.kind == "pointwise":
            k = x.shape[-1]
            return pointwise.gemm_op(x.off, math.prod(x.shape) // k, k, self.w_off, self.b_off,
                                     self.cout, act, out.off, r_off, threads)
        top, left = args
        if self.kind == "depthwise":
            return depthwise.separable_op(x.off, x.shape, out.off, out.shape,
                                          (self.weight, self.w_off, self.b_off, act),
                                          stride=self.stride, dilation=self.dilation,
                                          pad_top=top, pad_left=left, threads=threads)
        return conv.conv_op(x.off, self.input_shape(x.shape), out.off, out.shape, self.weight,
                            self.w_off, self.b_off, self.stride, self.dilation, top, left, act,
                            threads, self.nchw_input)

    def steps(self, ins, out, args, scratch, threads):
        residual = ins[1] if len(ins) > 1 else None
        fuse_residual = residual is not None and self.kind == "pointwise" and \
            self.fused_act() == self.act                      # out = act(conv) + residual
        steps = [self.kernel_op(ins[0], out, args, threads,
                                residual.off if fuse_residual else None)]
        if self.fused_act() != self.act:                      # rare activations: own pass
            steps.append(act_mod.activation_op(out.off, math.prod(out.shape), self.act, threads))
        if residual is not None and not fuse_residual:
            steps.append(lambda A: np.add(view(A, out), view(A, residual), out=view(A, out)))
        return steps

    def torch_weight(self):
        """The weight (BatchNorm folded in) in torch layout, unpacked from the weight arena:
        (Cout, Cin) for 1x1 convs and linears, (C, 1, k, k) depthwise, (Cout, Cin, k, k)."""
        if self.kind == "pointwise":
            return pointwise.unpack_pointwise_weight(self.weight)
        if self.kind == "depthwise":
            return depthwise.unpack_depthwise_weight(self.weight)
        return conv.unpack_conv_weight(self.weight)

    def reference(self, xs, out_shape, args):
        x = layout.nchw_to_nhwc_reference(xs[0]) if self.nchw_input else xs[0]  # (N, H, W, Cin)
        w, act = self.torch_weight(), self.fused_act()
        if self.kind == "pointwise":
            y = pointwise.pointwise_reference(x, w, self.bias, act)          # (..., Cout)
        elif self.kind == "depthwise":
            y = depthwise.depthwise_reference(x, w, self.bias, self.stride, self.dilation,
                                              *args, act, out_shape[1:3])   # (N, Ho, Wo, C)
        else:
            y = conv.conv2d_reference(x, w, self.bias, self.stride, self.dilation, *args, act,
                                      out_shape[1:3])                       # (N, Ho, Wo, Cout)
        if act != self.act:                                                 # rare activations
            y = act_mod.activation_reference(y, self.act)
        return y if len(xs) == 1 else y + xs[1]                             # + residual


class FusedSeparable(Node):
    """[1x1 expand ->] depthwise kxk -> 1x1 reduce [+ input], as one kernel op.

    Made by :func:`fuse_separable` from three (or two) Conv nodes.  The fused op
    (``kernels.depthwise.separable_op``) splits the output rows between parallel jobs;
    each job re-expands the few input rows it shares with a neighbour.  Where that
    recomputation would cost more than MAX_EXTRA (small maps on several threads), rows
    are narrower than MIN_WIDTH (small maps: they fit in cache anyway), or a row would
    leave more than MAX_IDLE of the rows its register tiles compute idle
    (``pointwise.tile_rows``: tiles of MR = 6 rows with AVX2, 12 with AVX-512, and a lower
    one, simd.TILE_HEIGHTS, for the last rows; a 28-pixel row is 28 rows either way, and
    fused is 1.5-2 % faster for MobileNetV2 on Zen 3), the three convs run one after the
    other on scratch buffers instead.
    """

    MAX_EXTRA = 0.15   # largest fraction of input rows expanded twice that fusion may cost
    MIN_WIDTH = 24     # narrowest input rows the fused op takes (each is one 1x1 product)
    MAX_IDLE = 0.15    # largest fraction of idle tile rows a row's 1x1 product may have

    def __init__(self, expand, dw, reduce, residual):
        x = expand.inputs[0] if expand is not None else dw.inputs[0]
        inputs = [x] + ([reduce.inputs[1]] if residual else [])
        super().__init__(" + ".join(n.name for n in (expand, dw, reduce) if n is not None),
                         inputs, reduce.output)
        self.expand, self.dw, self.reduce, self.residual = expand, dw, reduce, residual
        self.parts = [c for c in (expand, dw, reduce) if c is not None]
        self.tensors = sum((c.tensors for c in self.parts), ())
        self.torch_names = reduce.torch_names

    def _shapes(self, x_shape):
        e = self.expand.infer([x_shape])[0] if self.expand is not None else x_shape
        d, pads = self.dw.infer([e])
        return e, d, pads

    def infer(self, shapes):
        _, d, pads = self._shapes(shapes[0])
        return self.reduce.infer([d])[0], pads

    def fused(self, x_shape, out_shape, args, threads):
        """Fuse unless the rows are too short for good register tiles (the fused op expands
        one input row at a time), or jobs would expand more than MAX_EXTRA of the input rows
        twice."""
        n, h, w, _ = x_shape
        if w < self.MIN_WIDTH or pointwise.tile_rows(w) - w > self.MAX_IDLE * w:
            return False
        ho = out_shape[1]
        rows = depthwise.plan_row_jobs(n, ho, threads)
        s, d, top = self.dw.stride, self.dw.dilation, args[0]
        produced = 0
        for i_lo in range(0, ho, rows):                  # input rows each job produces
            i_hi = min(ho, i_lo + rows)
            produced += (min(h - 1, (i_hi - 1) * s - top + (self.dw.k - 1) * d)
                         - max(0, i_lo * s - top) + 1)
        return produced <= (1 + self.MAX_EXTRA) * min(h, ho * s + (self.dw.k - 1) * d)

    def scratch_size(self, in_shapes, out_shape, args, threads):
        if self.fused(in_shapes[0], out_shape, args, threads):
            return 0
        e, d, _ = self._shapes(in_shapes[0])
        return (math.prod(e) if self.expand is not None else 0) + math.prod(d)

    def steps(self, ins, out, args, scratch, threads):
        x = ins[0]
        if self.fused(x.shape, out.shape, args, threads):
            top, left = args

            def conv_args(c):
                return None if c is None else (c.weight, c.w_off, c.b_off, c.act)
            return [depthwise.separable_op(
                x.off, x.shape, out.off, out.shape, conv_args(self.dw), conv_args(self.expand),
                conv_args(self.reduce), x.off if self.residual else None, self.dw.stride,
                self.dw.dilation, top, left, threads)]
        e_shape, d_shape, pads = self._shapes(x.shape)           # unfused, on scratch
        e = Tensor(scratch.off, e_shape) if self.expand is not None else x
        d = Tensor(scratch.off + (math.prod(e_shape) if self.expand is not None else 0), d_shape)
        ops = [self.expand.kernel_op(x, e, None, threads)] if self.expand is not None else []
        ops.append(self.dw.kernel_op(e, d, pads, threads))
        ops.append(self.reduce.kernel_op(d, out, None, threads,
                                         ins[1].off if self.residual else None))
        return ops

    def reference(self, xs, out_shape, args):
        e_shape, d_shape, pads = self._shapes(xs[0].shape)
        e = xs[0] if self.expand is None else self.expand.reference(xs[:1], e_shape, None)
        d = self.dw.reference([e], d_shape, pads)                           # (N, Ho, Wo, Ch)
        return self.reduce.reference([d] + xs[1:], out_shape, None)         # (N, Ho, Wo, Cout)


def read_input_in_place(nodes, keep):
    """Let the stem convolution read the NCHW model input itself: its im2col gather reads
    any layout as cheaply, and the layout change (a full copy of the input) disappears."""
    if len(nodes) < 2 or not isinstance(nodes[0], ToNHWC):
        return nodes
    to_nhwc, stem = nodes[0], nodes[1]
    readers = [n for n in nodes if to_nhwc.output in n.inputs]
    if (readers == [stem] and isinstance(stem, Conv) and stem.kind == "full"
            and conv.stages_in_registers(stem.k, stem.dilation)
            and stem.inputs == (to_nhwc.output,) and to_nhwc.output not in keep):
        stem.inputs, stem.nchw_input = to_nhwc.inputs, True
        return nodes[1:]
    return nodes


def fuse_separable(nodes, keep):
    """Replace [pointwise ->] depthwise -> pointwise chains by FusedSeparable nodes.

    A chain fuses when each intermediate tensor is read only by the next node and is not a
    model output, the activations are fusable, and a residual (if any) is the chain's input.
    """
    readers = collections.Counter(name for node in nodes for name in node.inputs)
    keep = set(keep)

    def plain(node, kind):        # a conv of this kind, no residual, activation in the kernel
        return (isinstance(node, Conv) and node.kind == kind and len(node.inputs) == 1
                and node.fused_act() == node.act)

    def feeds(node, nxt):         # node's output goes to nxt only
        return (readers[node.output] == 1 and node.output not in keep
                and nxt.inputs[0] == node.output)

    def separable(dw, reduce, x):
        return (plain(dw, "depthwise") and isinstance(reduce, Conv) and feeds(dw, reduce)
                and reduce.kind == "pointwise" and reduce.fused_act() == reduce.act
                and reduce.inputs[1:] in ((), (x,)))

    out, i = [], 0
    while i < len(nodes):
        a, b, c = (nodes + [None, None])[i:i + 3]
        if (c is not None and plain(a, "pointwise") and feeds(a, b)
                and separable(b, c, a.inputs[0])):
            out.append(FusedSeparable(a, b, c, len(c.inputs) == 2))       # expand, dw, reduce
            i += 3
        elif b is not None and separable(a, b, a.inputs[0]):
            out.append(FusedSeparable(None, a, b, len(b.inputs) == 2))    # dw, reduce
            i += 2
        else:
            out.append(a)
            i += 1
    return out


class GlobalAvgPool(Node):
    """(N, H, W, C) -> (N, C)."""

    def infer(self, shapes):
        n, _, _, c = shapes[0]
        return (n, c), None

    def steps(self, ins, out, args, scratch, threads):
        return [pooling.pool_op(ins[0].off, ins[0].shape, out.off)]

    def reference(self, xs, out_shape, args):
        return pooling.global_avg_pool_reference(xs[0])                     # (N, C)


class Broadcast(Node):
    """(N, C) vector -> (N, H, W, C) map of the size of ``inputs[1]``.

    Bilinear upsampling of a 1x1 map (the ASPP pooling branch) is exactly a broadcast,
    with align_corners True or False.
    """

    def infer(self, shapes):
        (n, c), (_, h, w, _) = shapes
        return (n, h, w, c), None

    def steps(self, ins, out, args, scratch, threads):
        return [layout.copy_channels_op(ins[0].off, ins[0].shape, out.off, out.shape, 0,
                                        broadcast=True, threads=threads)]

    def reference(self, xs, out_shape, args):
        return np.broadcast_to(xs[0][:, None, None, :], out_shape).copy()   # (N, H, W, C)


class Concat(Node):
    """Concatenate NHWC maps along channels, in input order."""

    def infer(self, shapes):
        return shapes[0][:-1] + (sum(s[-1] for s in shapes),), None

    def steps(self, ins, out, args, scratch, threads):
        starts = np.cumsum([0] + [t.shape[-1] for t in ins])     # each input's first channel
        return [layout.copy_channels_op(t.off, t.shape, out.off, out.shape, int(c0),
                                        threads=threads) for t, c0 in zip(ins, starts)]

    def reference(self, xs, out_shape, args):
        return np.concatenate(xs, axis=-1)                                  # (N, H, W, sum C)


class Unfold(Node):
    """(N, H, W, C) map -> (N, p*p, nh*nw, C) patch tokens.

    mode 'floor' (MobileViTV2): nh = H // p; leftover rows/columns are not read.
    mode 'resize' (MobileViT): nh = ceil(H / p); the map is first resized bilinearly
    (align_corners=False) to (nh*p, nw*p) when H or W is not a multiple of p.
    """

    def __init__(self, name, inputs, output, p, mode):
        super().__init__(name, inputs, output)
        self.p, self.mode = p, mode

    def infer(self, shapes):
        n, h, w, c = shapes[0]
        p = self.p
        if self.mode == "floor":
            nh, nw = h // p, w // p
            if nh < 1 or nw < 1:
                raise InputTooSmall(f"{self.name}: a {h}x{w} map has no full {p}x{p} patch")
            return (n, p * p, nh * nw, c), (nh, nw, None)
        nh, nw = math.ceil(h / p), math.ceil(w / p)
        resized = None if (nh * p, nw * p) == (h, w) else (n, nh * p, nw * p, c)
        return (n, p * p, nh * nw, c), (nh, nw, resized)

    def scratch_size(self, in_shapes, out_shape, args, threads):
        return math.prod(args[2]) if args[2] else 0

    def steps(self, ins, out, args, scratch, threads):
        nh, nw, resized = args
        x = ins[0]
        steps = []
        if resized is not None:                   # odd map (MobileViT): resize it first
            x = Tensor(scratch.off, resized)
            steps.append(resize.resize_op(ins[0].off, ins[0].shape, x.off, resized[1:3], 0))
        return steps + [patches.patch_op("unfold", x.off, x.shape, self.p, nh, nw, out.off)]

    def reference(self, xs, out_shape, args):
        nh, nw, resized = args
        x = xs[0] if resized is None else resize.resize_bilinear_reference(xs[0], resized[1:3])
        return patches.unfold_patches_reference(x, self.p, nh, nw)          # (N, P, T, C)


class Fold(Node):
    """(N, p*p, nh*nw, C) tokens -> (N, H, W, C) map, H and W those of ``inputs[1]``.

    mode 'floor': uncovered rows/columns become exact zeros (MobileViTV2).
    mode 'resize': the (nh*p, nw*p) map is resized back to (H, W) (MobileViT).
    """

    def __init__(self, name, inputs, output, p, mode):
        super().__init__(name, inputs, output)
        self.p, self.mode = p, mode

    def infer(self, shapes):
        (n, _, _, c), (_, h, w, _) = shapes
        p = self.p
        if self.mode == "floor":
            return (n, h, w, c), (h // p, w // p, None)
        nh, nw = math.ceil(h / p), math.ceil(w / p)
        resized = None if (nh * p, nw * p) == (h, w) else (n, nh * p, nw * p, c)
        return (n, h, w, c), (nh, nw, resized)

    def scratch_size(self, in_shapes, out_shape, args, threads):
        return math.prod(args[2]) if args[2] else 0

    def steps(self, ins, out, args, scratch, threads):
        nh, nw, resized = args
        if resized is None:
            return [patches.patch_op("fold", ins[0].off, out.shape, self.p, nh, nw, out.off)]
        tmp = Tensor(scratch.off, resized)
        return [patches.patch_op("fold", ins[0].off, tmp.shape, self.p, nh, nw, tmp.off),
                resize.resize_op(tmp.off, tmp.shape, out.off, out.shape[1:3], 0)]

    def reference(self, xs, out_shape, args):
        nh, nw, resized = args
        if resized is None:
            return patches.fold_patches_reference(xs[0], self.p, nh, nw,
                                                  *out_shape[1:3])          # (N, H, W, C)
        y = patches.fold_patches_reference(xs[0], self.p, nh, nw, *resized[1:3])  # (N, nh*p, ..)
        return resize.resize_bilinear_reference(y, out_shape[1:3])          # (N, H, W, C)


class Norm(Node):
    """A normalisation with per-channel affine parameters; shape-preserving.

    ``group``: GroupNorm(1) (one group over all of a sample's values, MobileViTV2), else
    LayerNorm (over the channel axis, per token, MobileViT).
    """

    def __init__(self, name, inputs, output, group, gamma, beta, eps):
        super().__init__(name, inputs, output)
        self.group, self.eps = bool(group), float(eps)
        self.params = [np.ascontiguousarray(a, np.float32) for a in (gamma, beta)]

    def place(self, arena):
        self.offsets = [arena.add(a) for a in self.params] + [
            arena.add(np.array([self.eps], np.float32))]

    def infer(self, shapes):
        return shapes[0], None

    def scratch_size(self, in_shapes, out_shape, args, threads):
        return norm.group_norm_stats_floats(in_shapes[0], threads) if self.group else 0

    def steps(self, ins, out, args, scratch, threads):
        x = ins[0]
        if self.group:          # a sample cut into parts: their statistics in the scratch
            return norm.group_norm_ops(x.off, x.shape, out.off, *self.offsets,
                                       scratch.off if scratch else 0, threads)
        return [norm.layer_norm_op(x.off, x.shape, out.off, *self.offsets, threads)]

    def reference(self, xs, out_shape, args):
        reference = norm.group_norm1_reference if self.group else norm.layer_norm_reference
        return reference(xs[0], *self.params, self.eps)                     # (N, P, T, C)


class SeparableAttention(Node):
    """(N, P, T, 1+2d) fused query/key/value -> (N, P, T, d)  (MobileViTV2)."""

    def infer(self, shapes):
        s = shapes[0]
        return s[:-1] + ((s[-1] - 1) // 2,), None

    def steps(self, ins, out, args, scratch, threads):
        return [attention_separable.separable_attention_op(ins[0].off, ins[0].shape, out.off)]

    def reference(self, xs, out_shape, args):
        return attention_separable.separable_attention_reference(xs[0])     # (N, P, T, d)


class MultiHeadAttention(Node):
    """(N, P, T, 3h) fused [q | k | v] -> (N, P, T, h): softmax(q k^T / sqrt(hd)) v per head."""

    def __init__(self, name, inputs, output, num_heads):
        super().__init__(name, inputs, output)
        self.num_heads = num_heads

    def infer(self, shapes):
        s = shapes[0]
        return s[:-1] + (s[-1] // 3,), None

    def steps(self, ins, out, args, scratch, threads):
        n, p, t, c3 = ins[0].shape
        return [attention_mha.mha_op(ins[0].off, (n * p, t, c3), self.num_heads, out.off)]

    def reference(self, xs, out_shape, args):
        n, p, t, c3 = xs[0].shape
        y = attention_mha.multi_head_attention_reference(xs[0].reshape(n * p, t, c3),
                                                          self.num_heads)   # (N*P, T, h)
        return y.reshape(out_shape)                                         # (N, P, T, h)


# ----------------------------------------------------------------------------------------
# Graph, plan and runner
# ----------------------------------------------------------------------------------------
class KernelsNotCached(Exception):
    """A plan made with ``may_compile=False`` needs kernels that are not in the cache yet."""


class Plan:
    """Everything fixed for one input shape and thread count: each tensor's place in the
    activation arena ``A``, and the program of kernel ops (with the rare NumPy steps).
    ``may_compile=False``: raise KernelsNotCached rather than compile a kernel."""

    def __init__(self, graph, input_shape, keep, threads, may_compile=True):
        self.threads = threads
        shapes, args = graph.infer(input_shape)
        # Liveness: a tensor's place is free again after its last reader ran.
        last_use = {}
        for idx, node in enumerate(graph.nodes):
            for name in node.inputs:
                last_use[name] = idx
        keep = set(keep)
        free, self.size = [], 0                 # free places: [offset, size]

        def take(size):
            size = -(-max(size, 1) // program.ALIGN) * program.ALIGN
            fits = [i for i, (_, n) in enumerate(free) if n >= size]
            if fits:
                return free.pop(min(fits, key=lambda i: free[i][1]))   # best fit
            self.size += size
            return [self.size - size, size]

        self.tensors = {graph.input: Tensor(take(math.prod(input_shape))[0], tuple(input_shape))}
        owner = {}
        ops, self.node_steps = [], []    # per node: its steps, ("ops", first, last) or NumPy
        for idx, (node, node_args) in enumerate(zip(graph.nodes, args)):
            shape = shapes[node.output]
            owner[node.output] = take(math.prod(shape))
            out = self.tensors[node.output] = Tensor(owner[node.output][0], shape)
            ins = [self.tensors[name] for name in node.inputs]
            n_scratch = node.scratch_size([t.shape for t in ins], shape, node_args, threads)
            scratch, node_scratch = None, []
            if n_scratch:
                node_scratch.append(take(n_scratch))
                scratch = Tensor(node_scratch[0][0], (n_scratch,))
            steps = []
            for step in node.steps(ins, out, node_args, scratch, threads):
                if isinstance(step, program.Op):
                    if step.scratch:                   # each worker's scratch space
                        node_scratch.append(take(step.scratch * threads))
                        step.scratch_off = node_scratch[-1][0]
                    ops.append(step)
                    step = ("ops", len(ops) - 1, len(ops))
                steps.append(step)
            free.extend(node_scratch)                  # free again after this node
            self.node_steps.append((node, _merged(steps)))
            dead = {name for name in node.inputs if last_use[name] == idx}
            if node.output not in last_use:
                dead.add(node.output)       # produced for nobody (e.g. unrequested hidden state)
            for name in dead - keep - {graph.input}:
                free.append(owner[name])
        self.program = program.table(ops)
        if not (may_compile or program.kernels_ready({op.kind for op in ops}
                                                     | set(graph.post_kernels))):
            raise KernelsNotCached()
        self.jobs = program.job_addresses(ops, graph.post_kernels)
        self.steps = _merged([s for _, steps in self.node_steps for s in steps])
        self.arena = program.aligned_floats(self.size)         # cache-line aligned

    def run(self, W, steps):
        """Run ``steps``: program segments on the arenas, NumPy steps on the arena."""
        for step in steps:
            if isinstance(step, tuple):
                program.run_program(self.arena, W, self.program, self.jobs, step[1], step[2],
                                    self.threads)
            else:
                step(self.arena)


def _merged(steps):
    """Consecutive program segments joined into one (one call into compiled code)."""
    out = []
    for step in steps:
        if isinstance(step, tuple) and out and isinstance(out[-1], tuple) and \
                out[-1][2] == step[1]:
            out[-1] = ("ops", out[-1][1], step[2])
        else:
            out.append(step)
    return out


def release_freed_memory():
    """Hand the memory freed so far back to the operating system where the C library keeps
    it for reuse (glibc's ``malloc_trim``; elsewhere nothing happens).  Without this, the
    weights' temporary copies made while a model is built stay in the process's memory
    after they are freed, beside the weight arena."""
    if not _MALLOC_TRIM:
        try:
            _MALLOC_TRIM.append(native.process_library().malloc_trim)
        except (OSError, AttributeError, TypeError):
            _MALLOC_TRIM.append(None)
    if _MALLOC_TRIM[0] is not None:
        _MALLOC_TRIM[0](0)


_MALLOC_TRIM = []


class Graph:
    """A list of nodes, the weight arena and the names of the tensors a model returns.

    ``outputs`` maps 'logits', 'pooler_output', 'last_hidden_state' to tensor names
    (or None) and 'hidden_states' to a list of names.
    """

    MAX_CACHED_SHAPES = 4  # plans (and their buffers) kept for this many recent input shapes
    unused = ()            # UnusedLayers: counted by summaries, never run (set by the builder)
    post_kernels = ()      # kernel kinds the model's post-processing runs (set by the Model)

    def __init__(self, nodes, input_name, outputs):
        self.nodes, self.input, self.outputs = nodes, input_name, outputs
        arena, placed = program.Arena(), []
        for part in (part for node in nodes for part in getattr(node, "parts", (node,))):
            part.place(arena)
            placed.append((part, len(arena.parts)))     # its arrays: the arena's first n
        self.weights = arena.allocate()
        for i, (part, n) in enumerate(placed):   # layer by layer: each then keeps views
            arena.fill(self.weights, n)           # into the arena, and its own copies are
            part.attach(self.weights)             # freed as the arena fills
            if i % 16 == 15:
                release_freed_memory()
        release_freed_memory()
        self._pool, self._lock = collections.OrderedDict(), threading.Lock()

    def _kept(self, with_hidden, keep=()):
        """The tensors a call returns, each once: the outputs, the hidden states if asked
        for, and ``keep``."""
        names = [v for k, v in self.outputs.items() if k != "hidden_states" and v]
        hidden = list(self.outputs["hidden_states"]) if with_hidden else []
        return list(dict.fromkeys(names + hidden + list(keep)))

    @staticmethod
    def _key(shape, kept, threads):
        """The pool's key of the plans for one input shape, set of returned tensors and
        thread count."""
        return tuple(shape), tuple(kept), threads

    def infer(self, input_shape):
        """({tensor: shape}, [static args per node]) for ``input_shape`` (N, C, H, W).

        Raises InputTooSmall when a layer would get an empty map.
        """
        shapes, args = {self.input: tuple(input_shape)}, []
        for node in self.nodes:
            out_shape, node_args = node.infer([shapes[i] for i in node.inputs])
            shapes[node.output] = tuple(out_shape)
            args.append(node_args)
        return shapes, args

    def shapes(self, input_shape):
        """Every tensor's shape for ``input_shape`` (N, C, H, W); raises InputTooSmall."""
        return self.infer(input_shape)[0]

    def _acquire(self, shape, kept, threads):
        key = self._key(shape, kept, threads)
        with self._lock:
            free = self._pool.setdefault(key, [])
            if free:
                return key, free.pop()
        return key, Plan(self, shape, kept, threads)

    def prepare(self, input_shape, threads, may_compile=True):
        """Plan ``input_shape`` (N, C, H, W) for ``threads`` now and load its kernels, as a
        first call would, and keep the plan for that call (its buffers stay untouched until
        then).  ``may_compile=False``: only if every kernel it needs is in the cache already;
        returns whether the plan was made.  Raises InputTooSmall."""
        kept = self._kept(False)
        key = self._key(input_shape, kept, threads)
        with self._lock:
            if self._pool.get(key):
                return True
        try:
            plan = Plan(self, input_shape, kept, threads, may_compile)
        except KernelsNotCached:
            return False
        self._release(key, plan)
        return True

    def _release(self, key, plan):
        with self._lock:
            self._pool.setdefault(key, []).append(plan)
            self._pool.move_to_end(key)
            while len(self._pool) > self.MAX_CACHED_SHAPES:  # e.g. segment() on photos of
                self._pool.popitem(last=False)               # many sizes: bound the memory

    def run(self, x, with_hidden=False, threads=None, timings=None, backend="numba", keep=(),
            nchw=False):
        """Run on NCHW float32 ``x``; returns {name: NHWC array (a copy)} of the outputs.
        Raises NonFiniteInput if ``x`` holds NaN or infinite values.

        ``threads``: worker threads (default: every core).  If ``timings`` is a list,
        (node, seconds) pairs are appended to it (profiling).  ``backend``: "numba" (the
        planned program of compiled kernels) or "numpy" (:meth:`run_reference`).  ``keep``:
        more tensors to return (e.g. every node's output, for debugging).  ``nchw``: maps
        come back as contiguous (N, C, H, W) arrays instead, transposed as they are copied
        out (one pass over them, not two).
        """
        kept = self._kept(with_hidden, keep)
        if backend == "numpy":
            if not np.isfinite(x).all():
                raise NonFiniteInput()
            values = self.run_reference(x, kept, timings)
            return {name: _copy_out(a, nchw) for name, a in values.items()} if nchw else values
        key, plan = self._acquire(x.shape, kept, threads or workers.default_threads())
        try:
            if not layout.copy_in(view(plan.arena, plan.tensors[self.input]), x):
                raise NonFiniteInput()
            if timings is None:
                plan.run(self.weights, plan.steps)
            else:
                for node, steps in plan.node_steps:
                    t0 = time.perf_counter()
                    plan.run(self.weights, steps)
                    timings.append((node, time.perf_counter() - t0))
            return {name: _copy_out(view(plan.arena, plan.tensors[name]), nchw) for name in kept}
        finally:
            self._release(key, plan)

    def run_reference(self, x, kept, timings=None):
        """The NumPy backend: the nodes, shapes and arguments of a plan, every node computing
        its output with the kernels' NumPy references (:meth:`Node.reference`).  No compiled
        code runs: slow, and readable in a debugger -- step through this loop."""
        shapes, args = self.infer(x.shape)
        last_use = {name: i for i, node in enumerate(self.nodes) for name in node.inputs}
        values = {self.input: x}                                 # tensor name -> NumPy array
        for i, (node, node_args) in enumerate(zip(self.nodes, args)):
            t0 = time.perf_counter()
            y = node.reference([values[name] for name in node.inputs], shapes[node.output],
                               node_args)
            assert y.shape == shapes[node.output] and y.dtype == np.float32, node
            values[node.output] = y
            if timings is not None:
                timings.append((node, time.perf_counter() - t0))
            for name in set(node.inputs) - set(kept):            # free what nobody reads again
                if last_use[name] == i:
                    del values[name]
        return {name: values[name] for name in kept}


class GraphBuilder:
    """What model builders call: each method checks weights, appends a node, returns a name.

    Names are those of the checkpoint: a layer ``prefix`` of the backbone is stored as
    ``<backbone prefix><prefix>`` (e.g. ``mobilevitv2.conv_stem``) and the node is named so;
    head layers (``backbone=False``) as they are.  Each node also records the checkpoint
    tensors its weights come from (``Node.tensors``, for parameter counts) and the
    transformers modules whose output equals its own (``Node.torch_names``, for comparing
    activations with transformers' forward hooks): by default the layer itself, none for a
    layer whose output has a residual added (transformers adds it outside the layer), plus
    ``output_of``, a module that ends with this layer (an inverted residual, a transformer
    layer).
    """

    def __init__(self, store, num_channels):
        self.store = store
        self.nodes = []
        self.unused = []       # layers transformers computes but never reads (not run)
        self.channels = {"pixel_values": num_channels}
        self.input = "pixel_values"
        self._count = 0
        self._read = []        # (tensor name, shape) read for the node being built

    def _new(self, name):
        self._count += 1
        return f"{name}#{self._count}"

    def _name(self, prefix, backbone):
        return (self.store.prefix if backbone else "") + prefix

    def _get(self, prefix, name, shape, backbone):
        """Tensor ``<prefix>.<name>`` of the checkpoint, recorded for the node being built."""
        self._read.append((self._name(f"{prefix}.{name}", backbone), tuple(shape)))
        return self.store.get(f"{prefix}.{name}", shape, backbone)

    def _add(self, node, channels, torch_names=None, output_of=None):
        node.tensors, self._read = tuple(self._read), []
        names = (node.name,) if torch_names is None else tuple(torch_names)
        if output_of is not None:
            names += (output_of,)
        node.torch_names = names
        self.nodes.append(node)
        if len(self.nodes) % 16 == 0:    # the raw tensors and temporaries read so far
            release_freed_memory()
        self.channels[node.output] = channels
        return node.output

    # -- layers -----------------------------------------------------------------------------
    def to_nhwc(self, x):
        return self._add(ToNHWC("input", [x], self._new("nhwc")), self.channels[x], ())

    def conv(self, x, prefix, cout, k=1, stride=1, dilation=1, groups=1, bias=False,
             bn_eps=None, act=None, padding="symmetric", residual=None, backbone=True,
             output_of=None):
        """A transformers ConvLayer: ``<prefix>.convolution`` (+ ``<prefix>.normalization``).

        ``bn_eps`` None means no batch norm; otherwise BN is folded into the weights.
        ``act`` is an activation name or None.  ``residual`` names a tensor added after it.
        """
        cin = self.channels[x]
        get = lambda n, s: self._get(prefix, n, s, backbone)  # noqa: E731
        w = get("convolution.weight", (cout, cin // groups, k, k)).astype(np.float64)
        b = get("convolution.bias", (cout,)) if bias else None
        if bn_eps is not None:
            w, b = batchnorm.fold_batchnorm(
                w, b, get("normalization.weight", (cout,)), get("normalization.bias", (cout,)),
                get("normalization.running_mean", (cout,)),
                get("normalization.running_var", (cout,)),
                bn_eps)
        w = np.ascontiguousarray(w, dtype=np.float32)
        b = np.zeros(cout, np.float32) if b is None else np.ascontiguousarray(b, np.float32)
        if k == 1 and groups == 1 and stride == 1:
            kind = "pointwise"
            w = w.reshape(cout, cin)
        elif groups == cin and groups == cout:
            kind = "depthwise"
        elif groups == 1:
            kind = "full"
        else:
            raise NotImplementedError(f"{prefix}: grouped conv with groups={groups}")
        inputs = [x] if residual is None else [x, residual]
        name = self._name(prefix, backbone)
        node = Conv(name, inputs, self._new(name), kind, w, b, k, stride, dilation, padding,
                    act_mod.act_code(act))
        node.batch_norm = bn_eps is not None
        return self._add(node, cout, () if residual is not None else None,
                         output_of and self._name(output_of, backbone))

    def unused_conv(self, x, prefix, cout, bn_eps, act):
        """A 1x1 ConvLayer transformers computes but never reads: not run.  Its weights are
        optional (checkpoints exported from TF graphs lack them), shape-checked when present,
        and counted by :meth:`tinymvit.api.Model.summary` as PyTorch counts them."""
        cin, name = self.channels[x], self._name(prefix, True)
        shapes = [("convolution.weight", (cout, cin, 1, 1))] + [
            (f"normalization.{n}", (cout,)) for n in ("weight", "bias", "running_mean",
                                                      "running_var")]
        present = self.store.has(f"{prefix}.{shapes[0][0]}")
        if present:
            for n, shape in shapes:
                self.store.get(f"{prefix}.{n}", shape)
        self.unused.append(UnusedLayer(name, x, act, tuple((f"{name}.{n}", shape)
                                                           for n, shape in shapes), cin, cout,
                                       present))

    def linear(self, x, prefix, cout, act=None, residual=None, backbone=True, output_of=None):
        """nn.Linear ``<prefix>.weight/.bias`` on (N, C) vectors or (..., C) tokens,
        with activation and residual add fused."""
        return self.fused_linear(x, prefix, [None], cout, act=act, residual=residual,
                                 backbone=backbone, output_of=output_of)

    def fused_linear(self, x, prefix, names, cout_each, bias=True, act=None, residual=None,
                     backbone=True, output_of=None):
        """Several nn.Linear layers ``<prefix>.<name>`` reading the same input, as one matmul.

        Outputs are concatenated along channels in ``names`` order (a name None means
        ``<prefix>`` itself); ``bias=False`` means zero biases.
        """
        cin = self.channels[x]
        ws = [self._get(prefix if n is None else f"{prefix}.{n}", "weight", (cout_each, cin),
                        backbone) for n in names]
        bs = [self._get(prefix if n is None else f"{prefix}.{n}", "bias", (cout_each,), backbone)
              if bias else np.zeros(cout_each, np.float32) for n in names]
        inputs = [x] if residual is None else [x, residual]
        name = self._name(prefix, backbone)
        node = Conv(name, inputs, self._new(name), "pointwise",
                    np.ascontiguousarray(np.concatenate(ws)),
                    np.ascontiguousarray(np.concatenate(bs)),
                    1, 1, 1, "symmetric", act_mod.act_code(act))
        node.batch_norm, node.linear = False, True
        # nn.Linear applies no activation and no residual: its hook sees neither
        plain = names == [None] and residual is None and act is None
        return self._add(node, cout_each * len(names), None if plain else (),
                         output_of and self._name(output_of, backbone))

    def global_pool(self, x, name, backbone=True):
        name = self._name(name, backbone)
        return self._add(GlobalAvgPool(name, [x], self._new(name)), self.channels[x])

    def broadcast(self, v, like, name, backbone=True):
        name = self._name(name, backbone)
        return self._add(Broadcast(name, [v, like], self._new(name)), self.channels[v])

    def concat(self, xs, name, backbone=True):
        name = self._name(name, backbone)
        return self._add(Concat(name, xs, self._new(name)), sum(self.channels[x] for x in xs))

    def unfold(self, x, p, mode, name):
        name = self._name(name, True)
        return self._add(Unfold(name, [x], self._new(name), p, mode), self.channels[x])

    def fold(self, tokens, like, p, mode, name):
        name = self._name(name, True)
        return self._add(Fold(name, [tokens, like], self._new(name), p, mode),
                         self.channels[tokens])

    def _norm(self, x, prefix, eps, group):
        c = self.channels[x]
        g = self._get(prefix, "weight", (c,), True)
        b = self._get(prefix, "bias", (c,), True)
        name = self._name(prefix, True)
        return self._add(Norm(name, [x], self._new(name), group, g, b, eps), c)

    def group_norm(self, x, prefix, eps):
        """GroupNorm(1, C) ``<prefix>.weight/.bias`` (MobileViTV2's "layernorm")."""
        return self._norm(x, prefix, eps, True)

    def layer_norm(self, x, prefix, eps):
        """nn.LayerNorm(C) ``<prefix>.weight/.bias``, per token (MobileViT)."""
        return self._norm(x, prefix, eps, False)

    def separable_attention(self, qkv, prefix):
        """MobileViTV2's attention core; transformers' ``<prefix>`` module also applies
        ``out_proj``, so no module output equals this node's."""
        d = (self.channels[qkv] - 1) // 2
        name = self._name(prefix, True)
        return self._add(SeparableAttention(name, [qkv], self._new(name)), d, ())

    def multi_head_attention(self, qkv, prefix, num_heads):
        """MobileViT's attention core: the output of transformers' ``<prefix>.attention``
        (MobileViTSelfAttention; ``<prefix>`` also applies ``output.dense``)."""
        name = self._name(prefix, True)
        return self._add(MultiHeadAttention(name, [qkv], self._new(name), num_heads),
                         self.channels[qkv] // 3, (f"{name}.attention",))

    def build(self, outputs):
        self.store.check_all_used()
        names = [v for k, v in outputs.items() if k != "hidden_states" and v]
        keep = names + list(outputs["hidden_states"])
        nodes = fuse_separable(read_input_in_place(self.nodes, keep), keep)
        graph = Graph(nodes, self.input, outputs)
        graph.unused = self.unused
        return graph
