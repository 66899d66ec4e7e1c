"""The static graph: a list of nodes, built once from the config, walked by a runner.

A model builder (``tinymvit/models/*.py``) calls :class:`GraphBuilder` methods
(``conv``, ``group_norm``, ``unfold``...) that check and prepare the weights and
append one :class:`Node` per kernel call.  Tensors are named by strings; the
builder tracks their channel counts so every weight shape can be checked.

Nothing is allocated per call: :class:`Plan` infers every tensor's shape for one
input shape (padding included: TF-"SAME" padding depends on the input size), then
gives each tensor a view into a flat float32 buffer, reusing a buffer once its
tensor is dead.  Plans are cached per input shape (the most recent few shapes) and kept
in a small pool, so several threads can run the same model at once without sharing
buffers.

All activations are NHWC float32: (N, H, W, C) maps, (N, P, T, C) patch tokens,
(N, C) vectors.
"""
import collections
import math
import threading
import time

import numpy as np

from . import kernels as K  # noqa: F401  (selects the thread-safe Numba threading layer)
from .errors import InputError
from .kernels import activations as act_mod
from .kernels import (attention_mha, attention_separable, batchnorm, conv, depthwise, norm,
                      patches, pointwise, pooling, resize)


class InputTooSmall(InputError):
    """Raised while planning when a feature map becomes too small for a layer."""


# ----------------------------------------------------------------------------------------
# Nodes: one kernel call each.  ``infer`` maps input shapes to (output shape, static args)
# for one input size; ``run`` calls the kernel on planned buffers.
# ----------------------------------------------------------------------------------------
class Node:
    scratch = None  # shape of a private scratch buffer, decided in infer (or None)

    def __init__(self, name, inputs, output):
        self.name, self.inputs, self.output = name, tuple(inputs), output

    def infer(self, shapes):
        raise NotImplementedError

    def run(self, ins, out, args, scratch):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.name}: {', '.join(self.inputs)} -> {self.output})"


class ToNHWC(Node):
    """pixel_values (N, C, H, W) -> (N, H, W, C)."""

    def infer(self, shapes):
        n, c, h, w = shapes[0]
        return (n, h, w, c), None

    def run(self, ins, out, args, scratch):
        np.copyto(out, ins[0].transpose(0, 2, 3, 1))


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
        self.padding, self.act, self.bias = padding, act, bias
        self.cout = weight.shape[0]
        prepare = {"pointwise": pointwise.prepare_pointwise_weight,
                   "depthwise": depthwise.prepare_depthwise_weight,
                   "full": conv.prepare_conv_weight}[kind]
        self.weight = prepare(weight)

    def infer(self, shapes):
        x = shapes[0]
        if self.kind == "pointwise":
            return x[:-1] + (self.cout,), None
        n, h, w, _ = x
        top, ho = _conv_geometry(h, self.k, self.stride, self.dilation, self.padding)
        left, wo = _conv_geometry(w, self.k, self.stride, self.dilation, self.padding)
        if ho < 1 or wo < 1:
            raise InputTooSmall(f"{self.name}: a {h}x{w} map gives an empty output")
        return (n, ho, wo, self.cout), (top, left)

    def run(self, ins, out, args, scratch):
        residual = ins[1] if len(ins) > 1 else None
        fused = self.act <= act_mod.MAX_FUSED         # ReLU/ReLU6/SiLU: in the kernel's epilogue
        act = self.act if fused else act_mod.ACT_NONE
        fuse_residual = self.kind == "pointwise" and fused   # out = act(conv) + residual
        if self.kind == "pointwise":
            pointwise.pointwise_conv(ins[0], self.weight, self.bias, act, out,
                                     residual if fuse_residual else None)
        else:
            top, left = args
            fn = depthwise.depthwise_conv if self.kind == "depthwise" else conv.conv2d
            fn(ins[0], self.weight, self.bias, self.stride, self.dilation, top, left, act, out)
        if not fused:
            act_mod.activation(out, self.act)          # rare activations: a separate pass
        if residual is not None and not fuse_residual:
            out += residual


class GlobalAvgPool(Node):
    """(N, H, W, C) -> (N, C)."""

    def infer(self, shapes):
        n, _, _, c = shapes[0]
        return (n, c), None

    def run(self, ins, out, args, scratch):
        pooling.global_avg_pool(ins[0], out)


class Broadcast(Node):
    """(N, C) vector -> (N, H, W, C) map of the size of ``inputs[1]``.

    Bilinear upsampling of a 1x1 map (the ASPP pooling branch) is exactly a broadcast,
    with align_corners True or False.
    """

    def infer(self, shapes):
        (n, c), (_, h, w, _) = shapes
        return (n, h, w, c), None

    def run(self, ins, out, args, scratch):
        out[...] = ins[0][:, None, None, :]


class Concat(Node):
    """Concatenate NHWC maps along channels, in input order."""

    def infer(self, shapes):
        return shapes[0][:-1] + (sum(s[-1] for s in shapes),), None

    def run(self, ins, out, args, scratch):
        c = 0
        for x in ins:
            out[..., c:c + x.shape[-1]] = x
            c += x.shape[-1]


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

    def scratch_shape(self, args):
        return args[2]

    def run(self, ins, out, args, scratch):
        nh, nw, resized = args
        x = ins[0]
        if resized is not None:
            resize.resize_bilinear(x, scratch, align_corners=False)
            x = scratch
        patches.unfold_patches(x, self.p, nh, nw, out)


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

    def scratch_shape(self, args):
        return args[2]

    def run(self, ins, out, args, scratch):
        nh, nw, resized = args
        if resized is None:
            patches.fold_patches(ins[0], self.p, nh, nw, out)
        else:
            patches.fold_patches(ins[0], self.p, nh, nw, scratch)
            resize.resize_bilinear(scratch, out, align_corners=False)


class Norm(Node):
    """A normalisation with per-channel affine parameters; shape-preserving.

    kernel: ``norm.group_norm1`` (one group over all of a sample's values, MobileViTV2)
    or ``norm.layer_norm`` (over the channel axis, per token, MobileViT).
    """

    def __init__(self, name, inputs, output, kernel, gamma, beta, eps):
        super().__init__(name, inputs, output)
        self.kernel, self.gamma, self.beta, self.eps = kernel, gamma, beta, float(eps)

    def infer(self, shapes):
        return shapes[0], None

    def run(self, ins, out, args, scratch):
        self.kernel(ins[0], self.gamma, self.beta, self.eps, out)


class SeparableAttention(Node):
    """(N, P, T, 1+2d) fused query/key/value -> (N, P, T, d)  (MobileViTV2)."""

    def infer(self, shapes):
        s = shapes[0]
        return s[:-1] + ((s[-1] - 1) // 2,), None

    def run(self, ins, out, args, scratch):
        attention_separable.separable_attention(ins[0], out)


class MultiHeadAttention(Node):
    """(N, P, T, 3h) fused [q | k | v] -> (N, P, T, h): softmax(q k^T / sqrt(hd)) v per head."""

    def __init__(self, name, inputs, output, num_heads):
        super().__init__(name, inputs, output)
        self.num_heads = num_heads

    def infer(self, shapes):
        s = shapes[0]
        return s[:-1] + (s[-1] // 3,), None

    def run(self, ins, out, args, scratch):
        n, p, t, c3 = ins[0].shape
        attention_mha.multi_head_attention(ins[0].reshape(n * p, t, c3), self.num_heads,
                                           out.reshape(n * p, t, c3 // 3))


# ----------------------------------------------------------------------------------------
# Graph, plan and runner
# ----------------------------------------------------------------------------------------
class Plan:
    """Shapes, static per-node arguments and buffer views for one input shape."""

    def __init__(self, graph, input_shape, keep):
        shapes, self.args = graph.infer(input_shape)
        scratch_shapes = [node.scratch_shape(args) if hasattr(node, "scratch_shape") else None
                          for node, args in zip(graph.nodes, self.args)]

        # Liveness: a tensor's buffer returns to the free list after its last reader ran.
        last_use = {}
        for idx, node in enumerate(graph.nodes):
            for name in node.inputs:
                last_use[name] = idx
        keep = set(keep)
        free, self.views, self.scratch = [], {}, []

        def take(shape):
            size = max(1, int(np.prod(shape)))
            fits = [i for i, b in enumerate(free) if b.size >= size]
            if fits:
                buf = free.pop(min(fits, key=lambda i: free[i].size))  # best fit
            else:
                buf = np.empty(size, np.float32)
            return buf

        owner = {}
        for idx, node in enumerate(graph.nodes):
            buf = take(shapes[node.output])
            owner[node.output] = buf
            self.views[node.output] = buf[:int(np.prod(shapes[node.output]))].reshape(
                shapes[node.output])
            sbuf = None
            if scratch_shapes[idx] is not None:
                sbuf = take(scratch_shapes[idx])
                self.scratch.append(sbuf[:int(np.prod(scratch_shapes[idx]))].reshape(
                    scratch_shapes[idx]))
                free.append(sbuf)
            else:
                self.scratch.append(None)
            dead = {name for name in node.inputs if last_use[name] == idx}
            if node.output not in last_use:
                dead.add(node.output)       # produced for nobody (e.g. unrequested hidden state)
            for name in dead - keep - {graph.input}:
                free.append(owner[name])


class Graph:
    """A list of nodes plus the names of the tensors a model returns.

    ``outputs`` maps 'logits', 'pooler_output', 'last_hidden_state' to tensor names
    (or None) and 'hidden_states' to a list of names.
    """

    MAX_CACHED_SHAPES = 4  # plans (and their buffers) kept for this many recent input shapes

    def __init__(self, nodes, input_name, outputs):
        self.nodes, self.input, self.outputs = nodes, input_name, outputs
        self._pool, self._lock = collections.OrderedDict(), threading.Lock()

    def _kept(self, with_hidden):
        names = [v for k, v in self.outputs.items() if k != "hidden_states" and v]
        return names + (list(self.outputs["hidden_states"]) if with_hidden else [])

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

    def _acquire(self, shape, with_hidden):
        key = (tuple(shape), bool(with_hidden))
        with self._lock:
            free = self._pool.setdefault(key, [])
            if free:
                return key, free.pop()
        return key, Plan(self, shape, self._kept(with_hidden))

    def _release(self, key, plan):
        with self._lock:
            self._pool.setdefault(key, []).append(plan)
            self._pool.move_to_end(key)
            while len(self._pool) > self.MAX_CACHED_SHAPES:  # e.g. segment() on photos of
                self._pool.popitem(last=False)               # many sizes: bound the memory

    def run(self, x, with_hidden=False, timings=None):
        """Run on NCHW float32 ``x``; returns {name: NHWC array (a copy)} of the outputs.

        If ``timings`` is a list, (node, seconds) pairs are appended to it (profiling).
        """
        key, plan = self._acquire(x.shape, with_hidden)
        try:
            views = plan.views
            for node, args, scratch in zip(self.nodes, plan.args, plan.scratch):
                ins = [x if name == self.input else views[name] for name in node.inputs]
                if timings is None:
                    node.run(ins, views[node.output], args, scratch)
                else:
                    t0 = time.perf_counter()
                    node.run(ins, views[node.output], args, scratch)
                    timings.append((node, time.perf_counter() - t0))
            return {name: views[name].copy() for name in self._kept(with_hidden)}
        finally:
            self._release(key, plan)


class GraphBuilder:
    """What model builders call: each method checks weights, appends a node, returns a name."""

    def __init__(self, store, num_channels):
        self.store = store
        self.nodes = []
        self.channels = {"pixel_values": num_channels}
        self.input = "pixel_values"
        self._count = 0

    def _new(self, name):
        self._count += 1
        return f"{name}#{self._count}"

    def _add(self, node, channels):
        self.nodes.append(node)
        self.channels[node.output] = channels
        return node.output

    # -- layers -----------------------------------------------------------------------------
    def to_nhwc(self, x):
        return self._add(ToNHWC("input", [x], self._new("nhwc")), self.channels[x])

    def conv(self, x, prefix, cout, k=1, stride=1, dilation=1, groups=1, bias=False,
             bn_eps=None, act=None, padding="symmetric", residual=None, backbone=True):
        """A transformers ConvLayer: ``<prefix>.convolution`` (+ ``<prefix>.normalization``).

        ``bn_eps`` None means no batch norm; otherwise BN is folded into the weights.
        ``act`` is an activation name or None.  ``residual`` names a tensor added after it.
        """
        cin = self.channels[x]
        get = lambda n, s: self.store.get(f"{prefix}.{n}", s, backbone)  # noqa: E731
        w = get("convolution.weight", (cout, cin // groups, k, k)).astype(np.float64)
        b = get("convolution.bias", (cout,)) if bias else None
        if bn_eps is not None:
            w, b = batchnorm.fold_batchnorm(
                w, b, get("normalization.weight", (cout,)), get("normalization.bias", (cout,)),
                get("normalization.running_mean", (cout,)), get("normalization.running_var", (cout,)),
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
        node = Conv(prefix, inputs, self._new(prefix), kind, w, b, k, stride, dilation, padding,
                    act_mod.act_code(act))
        return self._add(node, cout)

    def linear(self, x, prefix, cout, act=None, residual=None, backbone=True):
        """nn.Linear ``<prefix>.weight/.bias`` on (N, C) vectors or (..., C) tokens,
        with activation and residual add fused."""
        return self.fused_linear(x, prefix, [None], cout, act=act, residual=residual,
                                 backbone=backbone)

    def fused_linear(self, x, prefix, names, cout_each, bias=True, act=None, residual=None,
                     backbone=True):
        """Several nn.Linear layers ``<prefix>.<name>`` reading the same input, as one matmul.

        Outputs are concatenated along channels in ``names`` order (a name None means
        ``<prefix>`` itself); ``bias=False`` means zero biases.
        """
        cin = self.channels[x]
        full = [prefix if n is None else f"{prefix}.{n}" for n in names]
        ws = [self.store.get(f"{p}.weight", (cout_each, cin), backbone) for p in full]
        bs = [self.store.get(f"{p}.bias", (cout_each,), backbone) if bias
              else np.zeros(cout_each, np.float32) for p in full]
        inputs = [x] if residual is None else [x, residual]
        node = Conv(prefix, inputs, self._new(prefix), "pointwise",
                    np.ascontiguousarray(np.concatenate(ws)), np.ascontiguousarray(np.concatenate(bs)),
                    1, 1, 1, "symmetric", act_mod.act_code(act))
        return self._add(node, cout_each * len(names))

    def global_pool(self, x, name="pool"):
        return self._add(GlobalAvgPool(name, [x], self._new(name)), self.channels[x])

    def broadcast(self, v, like, name="broadcast"):
        return self._add(Broadcast(name, [v, like], self._new(name)), self.channels[v])

    def concat(self, xs, name="concat"):
        return self._add(Concat(name, xs, self._new(name)), sum(self.channels[x] for x in xs))

    def unfold(self, x, p, mode, name="unfold"):
        return self._add(Unfold(name, [x], self._new(name), p, mode), self.channels[x])

    def fold(self, tokens, like, p, mode, name="fold"):
        return self._add(Fold(name, [tokens, like], self._new(name), p, mode),
                         self.channels[tokens])

    def _norm(self, x, prefix, eps, kernel):
        c = self.channels[x]
        g = self.store.get(f"{prefix}.weight", (c,))
        b = self.store.get(f"{prefix}.bias", (c,))
        return self._add(Norm(prefix, [x], self._new(prefix), kernel, g, b, eps), c)

    def group_norm(self, x, prefix, eps):
        """GroupNorm(1, C) ``<prefix>.weight/.bias`` (MobileViTV2's "layernorm")."""
        return self._norm(x, prefix, eps, norm.group_norm1)

    def layer_norm(self, x, prefix, eps):
        """nn.LayerNorm(C) ``<prefix>.weight/.bias``, per token (MobileViT)."""
        return self._norm(x, prefix, eps, norm.layer_norm)

    def separable_attention(self, qkv, prefix):
        d = (self.channels[qkv] - 1) // 2
        return self._add(SeparableAttention(prefix, [qkv], self._new(prefix)), d)

    def multi_head_attention(self, qkv, prefix, num_heads):
        return self._add(MultiHeadAttention(prefix, [qkv], self._new(prefix), num_heads),
                         self.channels[qkv] // 3)

    def build(self, outputs):
        self.store.check_all_used()
        return Graph(self.nodes, self.input, outputs)
