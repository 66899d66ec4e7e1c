"""A layer-by-layer summary of a model, like torchinfo's or Keras': ``model.summary()``.

One row per node of the graph, in execution order: the layer's name in the checkpoint
(a fused inverted residual lists its three convs), the operation, the output shape
(tinymvit's layout: channels last, (N, H, W, C) maps, (N, P, T, C) patch tokens),
the parameters and the multiply-adds of one image.

* **Parameters** are counted as PyTorch counts ``model.parameters()`` of the same
  checkpoint: the original tensors (a conv's weight and bias, its BatchNorm's weight and
  bias -- tinymvit folds BatchNorm into the conv at load, but counts what the checkpoint
  holds), not the running statistics (buffers).
* **Multiply-adds** count every conv tap (``out pixels x Cout x Cin/groups x k x k``),
  every linear layer and attention's matrix products (MobileViT: ``Q K^T`` and ``A V``,
  ``2 P T^2 h``), the convention of hook-based counters (and of the published numbers).
  Element-wise work -- normalisation, activations, softmax, MobileViTV2's separable
  attention (``P T d`` for its context vector: an element-wise product summed, well under
  0.1% of the network) -- is not counted.

A layer transformers computes but never reads (MobileNetV2's ``conv_1x1`` under a
segmentation head) has a row marked "not run": PyTorch counts it, tinymvit skips it.
"""
import math

import numpy as np

from . import graph as G
from .kernels import activations as A

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
ACT_NAMES = {A.ACT_RELU: "ReLU", A.ACT_RELU6: "ReLU6", A.ACT_SILU: "SiLU", A.ACT_GELU: "GELU",
             A.ACT_GELU_TANH: "GELU (tanh)", A.ACT_QUICK_GELU: "QuickGELU",
             A.ACT_SIGMOID: "Sigmoid", A.ACT_TANH: "Tanh", A.ACT_HARDSWISH: "Hardswish",
             A.ACT_MISH: "Mish", A.ACT_LEAKY_RELU: "LeakyReLU", A.ACT_RELU2: "ReLU^2"}


class Summary:
    """What :meth:`tinymvit.Model.summary` returns; ``str()`` is the table.

    rows          one dict per node in execution order: name, names (the checkpoint's
                  layer names it covers), op, output_shape, params, macs, run (False for
                  a layer that is counted but not run), and ms, share with timings
    total_params  parameters, as PyTorch counts ``model.parameters()``
    total_macs    multiply-adds of one image
    input_shape   the (1, C, H, W) input the shapes and MACs are for
    """

    def __init__(self, title, input_shape, rows, timed=False):
        self.title, self.input_shape, self.rows, self.timed = title, input_shape, rows, timed
        self.total_params = sum(r["params"] for r in rows)
        self.total_macs = sum(r["macs"] for r in rows)

    def __repr__(self):
        return (f"<Summary {self.title}: {len(self.rows)} rows, {self.total_params:,} params, "
                f"{human(self.total_macs)} MACs>")

    def __str__(self):
        head = ["#", "name", "op", "output shape", "params", "MACs"]
        table = [[str(i), r["name"], r["op"], str(r["output_shape"]), f"{r['params']:,}",
                  human(r["macs"])] for i, r in enumerate(self.rows)]
        if self.timed:
            head += ["ms", "share"]
            for line, r in zip(table, self.rows):
                line += [f"{r['ms']:.2f}", f"{100 * r['share']:.1f}%"] if r["run"] else ["", ""]
        widths = [max(len(line[i]) for line in [head] + table) for i in range(len(head))]
        right = {0, 4, 5, 6, 7}                                 # numbers: right-aligned

        def fmt(line):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(line, widths))).rstrip()
        rule = "-" * len(fmt(head))
        skipped = sum(r["macs"] for r in self.rows if not r["run"])
        lines = [f"{self.title}, input {'x'.join(map(str, self.input_shape))}", rule, fmt(head),
                 rule] + [fmt(line) for line in table] + [rule]
        lines.append(f"total params: {self.total_params:,} (as PyTorch counts the checkpoint's "
                     f"parameters; BatchNorm statistics are buffers)")
        lines.append(f"total MACs:   {human(self.total_macs)} per image (conv taps, linear "
                     f"layers, attention matmuls)"
                     + (f"; {human(skipped)} of them in layers transformers computes but "
                        f"never reads, which tinymvit skips" if skipped else ""))
        if self.timed:
            total = sum(r["ms"] for r in self.rows if r["run"])
            lines.append(f"total time:   {total:.2f} ms (median per node)")
        return "\n".join(lines)


def human(n):
    """12345678 -> '12.35 M' (K, M, G: thousands, millions, billions)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}" if unit == "G" else f"{n / scale:.2f} {unit}"
    return str(int(n))


def summarize(model, input_shape, timings=None):
    """The :class:`Summary` of ``model`` for ``input_shape`` (1, C, H, W); ``timings``:
    {node: seconds} to add a time column."""
    graph = model.graph
    shapes, args = graph.infer(input_shape)
    unused = {}
    for layer in graph.unused:
        unused.setdefault(layer.input, []).append(layer)
    rows = []
    for node, node_args in zip(graph.nodes, args):
        ins, out = [shapes[name] for name in node.inputs], shapes[node.output]
        parts = getattr(node, "parts", [node])
        rows.append(dict(name=_short_name([p.name for p in parts]),
                         names=[p.name for p in parts], op=describe(node, ins, node_args),
                         output_shape=out, params=count_params(node.tensors),
                         macs=macs(node, ins, out), run=True))
        if timings is not None:
            rows[-1]["ms"] = 1e3 * timings[node]
        for layer in unused.get(node.output, []):                   # counted, not run
            pixels = math.prod(out[1:-1])
            rows.append(dict(name=layer.name, names=[layer.name],
                             op=f"conv 1x1, BN{_act(A.act_code(layer.act))} (not run: unread"
                                + ("" if layer.in_checkpoint else ", not in the checkpoint")
                                + ")",
                             output_shape=out[:-1] + (layer.cout,),
                             params=count_params(layer.tensors),
                             macs=pixels * layer.cin * layer.cout, run=False))
    if timings is not None:
        total = sum(r["ms"] for r in rows if r["run"]) or 1.0
        for r in rows:
            if r["run"]:
                r["share"] = r["ms"] / total
    title = f"{model.family} {model.task} ({model.source})"
    return Summary(title, tuple(input_shape), rows, timed=timings is not None)


def count_params(tensors):
    """Parameters among (checkpoint tensor name, shape) pairs: everything but BN buffers."""
    return sum(math.prod(shape) for name, shape in tensors if not name.endswith(BUFFERS))


def macs(node, in_shapes, out_shape):
    """Multiply-adds of ``node`` for ONE image (batch size 1)."""
    if isinstance(node, G.Conv):
        cin = node.weight.cin if node.kind != "depthwise" else 1
        return math.prod(out_shape[1:]) * cin * node.k * node.k
    if isinstance(node, G.FusedSeparable):                      # [x ->] e -> d -> out
        e, d, _ = node._shapes(in_shapes[0])
        ins, outs = [in_shapes[0], e, d][-len(node.parts):], [e, d, out_shape][-len(node.parts):]
        return sum(macs(part, [i], o) for part, i, o in zip(node.parts, ins, outs))
    if isinstance(node, G.MultiHeadAttention):
        _, p, t, h = out_shape
        return 2 * p * t * t * h                                # Q K^T and A V, every head
    return 0


def describe(node, in_shapes, args):
    """A short text of what ``node`` computes, e.g. 'depthwise 3x3 s2, BN, SiLU'."""
    if isinstance(node, G.Conv):
        if getattr(node, "linear", False):
            n = len(node.tensors) // 2 if len(node.tensors) > 2 else 1
            text = "linear" if n == 1 else f"{n} linears (q, k, v) as one"
        else:
            text = {"pointwise": "conv 1x1", "depthwise": f"depthwise {node.k}x{node.k}",
                    "full": f"conv {node.k}x{node.k}"}[node.kind]
            text += f" s{node.stride}" if node.stride > 1 else ""
            text += f" d{node.dilation}" if node.dilation > 1 else ""
        text += ", BN" if getattr(node, "batch_norm", False) else ""
        text += _act(node.act)
        return text + (", + residual" if len(node.inputs) > 1 else "")
    if isinstance(node, G.FusedSeparable):
        parts = [describe(p, None, None).replace("conv ", "").replace("depthwise ", "dw ")
                 for p in node.parts]
        return "fused: " + " > ".join(parts)
    if isinstance(node, G.Unfold):
        nh, nw, resized = args
        text = f"unfold {node.p}x{node.p} patches ({nh}x{nw} of them)"
        return text + (f", after a bilinear resize to {resized[1]}x{resized[2]}"
                       if resized else "")
    if isinstance(node, G.Fold):
        nh, nw, resized = args
        return f"fold {node.p}x{node.p} patches back" + (
            ", bilinear resize back" if resized else
            ", uncovered rows/columns 0" if node.mode == "floor" else "")
    if isinstance(node, G.Norm):
        return "GroupNorm(1)" if node.group else "LayerNorm"
    if isinstance(node, G.MultiHeadAttention):
        return f"multi-head attention, {node.num_heads} heads"
    return {G.SeparableAttention: "separable attention (softmax over patches)",
            G.GlobalAvgPool: "global average pool", G.Concat: "concat channels",
            G.Broadcast: "broadcast to the map (bilinear from 1x1)",
            G.ToNHWC: "NCHW -> NHWC"}[type(node)]


def _act(code):
    """', SiLU' for an activation code, '' for none."""
    return f", {ACT_NAMES[code]}" if code in ACT_NAMES else ""


def _short_name(names):
    """'a.b.x + a.b.y' -> 'a.b.{x, y}' (the layers of a fused node share a prefix)."""
    if len(names) == 1:
        return names[0]
    parts = [n.split(".") for n in names]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    prefix = ".".join(parts[0][:common])
    return f"{prefix}.{{{', '.join('.'.join(p[common:]) for p in parts)}}}"


def median_timings(model, pixel_values, repeats):
    """{node: median seconds} over ``repeats`` runs after a warm-up run."""
    model._run(pixel_values)                                    # compiles/plans first
    runs = []
    for _ in range(repeats):
        timings = []
        model._run(pixel_values, timings=timings)
        runs.append(timings)
    return {node: float(np.median([run[i][1] for run in runs]))
            for i, (node, _) in enumerate(runs[0])}
