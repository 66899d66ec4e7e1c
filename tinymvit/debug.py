"""Where do two computations of a model part ways?  Debugging aids.

    from tinymvit.debug import first_divergence
    first_divergence(model, pixel_values)                     # Numba backend vs NumPy backend
    first_divergence(model, pixel_values, reference=acts)     # vs {module name: activation}

Every node of the graph is compared in execution order, and the first one whose
output differs by more than ``tol`` (max |a - b| relative to max |b|) is reported:
the earliest place a bug can be, since everything before it agrees.

``reference`` is a dict of activations named by transformers module (e.g. collected
with forward hooks, see :func:`torch_activations`); a node is compared with the
module whose output equals its own (``Node.torch_names``: a ConvLayer, a norm, an
inverted residual, a transformer layer...), converted to transformers' layout: NCHW
maps, (N, C, P, T) MobileViTV2 patch tokens, (N*P, T, C) MobileViT tokens, (N, C)
vectors (or (N, C, 1, 1)).
"""
from collections import namedtuple

import numpy as np

from .errors import InputError
from .graph import Fold, Unfold

Comparison = namedtuple("Comparison", "index name other shape error worst ours theirs")
Comparison.__doc__ = """One compared node: its position in execution order, its name, what it was
compared with (the other backend, or a transformers module name), the shape compared, the
relative error, and the worst element's index and two values."""


class Divergence(Comparison):
    """The first :class:`Comparison` above the tolerance ``tol``; ``agreed``: how many
    compared nodes before it agreed."""

    def __new__(cls, comparison, tol, agreed):
        self = super().__new__(cls, *comparison)
        self.tol, self.agreed = tol, agreed
        return self

    def __str__(self):
        other = self.other if self.other == "the numpy backend" else (
            "its reference activation" + ("" if self.other == self.name else f" ({self.other})"))
        return (f"{self.name} (node {self.index}) differs from {other}: relative error "
                f"{self.error:.3g} > {self.tol:g}, worst at {self.worst} ({self.ours:.6g} vs "
                f"{self.theirs:.6g}); the {self.agreed} compared nodes before it agree")


def activations(model, pixel_values, backend=None):
    """Every node's output on ``pixel_values``: {node name: NHWC array}, in execution order."""
    nodes = model.graph.nodes
    values = model._run(pixel_values, backend=backend, keep=[n.output for n in nodes])
    return {node.name: values[node.output] for node in nodes}


def compare(model, pixel_values, reference=None, backend=None):
    """[:class:`Comparison`] of every node that has a counterpart, in execution order.

    reference None: the Numba backend against the NumPy backend (``backend`` is then
    ignored).  A dict: the model (its default backend, or ``backend``) against these
    activations, by transformers module name (nodes without a counterpart are skipped).
    """
    nodes = model.graph.nodes
    if reference is None:
        ours = activations(model, pixel_values, "numba")
        theirs = activations(model, pixel_values, "numpy")
        pairs = [(node, "the numpy backend", theirs[node.name]) for node in nodes]
        convert = lambda node, a, ref: a                        # noqa: E731
    else:
        if not isinstance(reference, dict):
            raise InputError(f"reference must be a dict {{module name: activation}}, got "
                             f"{type(reference).__name__}")
        ours = activations(model, pixel_values, backend)
        pairs = [(node, name, reference[name]) for node in nodes for name in node.torch_names
                 if name in reference]
        tokens = _token_tensors(nodes)
        convert = lambda node, a, ref: _torch_layout(            # noqa: E731
            a, ref.shape, node.output in tokens, model.family)
    index = {node.name: i for i, node in enumerate(nodes)}
    out = []
    for node, other, ref in pairs:
        ref = _numpy(ref)
        a = convert(node, ours[node.name], ref)
        out.append(_comparison(index[node.name], node.name, other, a, ref))
    return out


def first_divergence(model, pixel_values, reference=None, tol=None, backend=None):
    """The first node, in execution order, whose output differs: a :class:`Divergence`, or
    None when every compared node agrees within ``tol``.

    ``tol`` (relative to the compared tensor's largest value): default 1e-5 between the
    backends, 1e-4 (the golden tests' tolerance) against ``reference`` activations.
    See :func:`compare` for ``reference`` and ``backend``.
    """
    tol = (1e-5 if reference is None else 1e-4) if tol is None else float(tol)
    rows = compare(model, pixel_values, reference, backend)
    for agreed, row in enumerate(rows):
        if not row.error <= tol:                                # NaN counts as a divergence
            return Divergence(row, tol, agreed)
    return None


def torch_activations(torch_model, pixel_values):
    """{module name: output} of every module of a transformers model on ``pixel_values``
    (NCHW float32), collected with forward hooks: the ``reference`` of :func:`compare`.
    Needs PyTorch (only this function imports it)."""
    import torch

    acts, hooks = {}, []
    for name, module in torch_model.named_modules():
        def keep(module, inputs, output, name=name):
            if isinstance(output, torch.Tensor):
                acts[name] = output.detach().cpu().numpy().copy()
        hooks.append(module.register_forward_hook(keep))
    try:
        with torch.inference_mode():
            torch_model(torch.from_numpy(np.ascontiguousarray(pixel_values)))
    finally:
        for hook in hooks:
            hook.remove()
    return acts


def _token_tensors(nodes):
    """Names of the tensors that hold patch tokens (N, P, T, C) rather than maps."""
    tokens = set()
    for node in nodes:
        if isinstance(node, Unfold) or (not isinstance(node, Fold) and node.inputs
                                        and node.inputs[0] in tokens):
            tokens.add(node.output)
    return tokens


def _torch_layout(a, shape, tokens, family):
    """Our NHWC / (N, P, T, C) array in the layout of a transformers activation of ``shape``."""
    if a.ndim == 4:
        if tokens and family == "mobilevit":
            a = a.reshape(-1, a.shape[2], a.shape[3])           # (N*P, T, C) sequences
        else:
            a = a.transpose(0, 3, 1, 2)                         # NCHW, or (N, C, P, T)
    if a.shape != tuple(shape) and a.size == int(np.prod(shape)):
        a = a.reshape(shape)                                    # (N, C) vs (N, C, 1, 1)
    return a


def _numpy(value):
    if hasattr(value, "detach"):                                # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _comparison(index, name, other, a, ref):
    if a.shape != ref.shape:
        return Comparison(index, name, other, (a.shape, ref.shape), float("inf"), None,
                          float("nan"), float("nan"))
    a64, ref64 = a.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(a64 - ref64)                                  # NaN where either is NaN
    worst = np.unravel_index(np.argmax(np.where(np.isnan(diff), np.inf, diff)), diff.shape)
    scale = np.abs(ref64).max() if ref64.size else 0.0
    error = float(diff.max() / max(scale, 1e-30)) if diff.size else 0.0
    return Comparison(index, name, other, a.shape, error, tuple(int(i) for i in worst),
                      float(a64[worst]), float(ref64[worst]))
