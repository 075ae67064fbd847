"""A target's network as a chain of operations whose bounds :mod:`bench.core.bounds` propagates:
affine maps (linear and convolutional layers, the target's normalisation, BatchNorm in eval mode,
average pooling, reshapes) and the piecewise-linear ReLU and max-pooling.

:func:`network_of` traces the target's model with ``torch.fx`` and accepts only a chain of the
layers listed in :data:`SUPPORTED`; any other layer, or a graph that is not a chain (a residual
connection, a concatenation), is refused in one line naming it: a bound of a network it does not
understand could be wrong. The chain it builds is checked against the target's own forward on a
probe batch before it is used.

Every affine operation answers three questions: its value (``forward``), how it stretches an
interval's radius (``forward_abs``: the map with ``|W|`` and no bias), and how a linear bound
expressed on its output reads on its input (``backward``: ``A ↦ (A W, A b)``, the step of
CROWN's backward pass, Zhang et al., NeurIPS 2018).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.grad import conv2d_input

from bench.core.errors import BadInput
from bench.core.target import Target

SUPPORTED = ("Linear", "Conv2d", "ReLU", "MaxPool2d", "AvgPool2d", "Flatten", "BatchNorm1d",
             "BatchNorm2d", "Dropout", "Identity", "the target's normalisation")
"""The layers a bounded network may contain (Dropout is the identity, as in evaluation)."""


class Op:
    """One operation of the chain: ``in_shape`` → ``out_shape`` (one sample's shapes)."""

    label = "op"

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.in_shape, self.out_shape = in_shape, out_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Affine(Op):
    """``x ↦ W x + b`` for some ``W`` and ``b`` (never materialised)."""

    def forward_abs(self, r: torch.Tensor) -> torch.Tensor:
        """``|W| r`` (no bias): the radius of an interval's image."""
        raise NotImplementedError

    def backward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``a``: ``[N, S, *out_shape]`` → (``a W``: ``[N, S, *in_shape]``, ``a b``: ``[N, S]``)."""
        raise NotImplementedError

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tightest interval containing the image of ``[lo, hi]``."""
        mid, rad = self.forward((lo + hi) / 2), self.forward_abs((hi - lo) / 2)
        return mid - rad, mid + rad


class Linear(Affine):
    label = "Linear"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__((weight.shape[1],), (weight.shape[0],))
        self.weight = weight
        self.bias = bias if bias is not None else weight.new_zeros(weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def forward_abs(self, r: torch.Tensor) -> torch.Tensor:
        return F.linear(r, self.weight.abs())

    def backward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a @ self.weight, a @ self.bias

    def squared_gain(self, scale2: torch.Tensor) -> torch.Tensor:
        """Per output, ``Σ_i W_oi² s_i``: its row's squared L2 norm on inputs scaled by √s."""
        return F.linear(scale2, self.weight ** 2)


class Conv(Affine):
    label = "Conv2d"

    def __init__(self, module: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None,
                 in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__(in_shape, out_shape)
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise BadInput(f"bounds take Conv2d with numeric zero padding; {module} has "
                           f"padding={module.padding!r}, padding_mode={module.padding_mode!r}")
        self.weight = weight
        self.bias = bias if bias is not None else weight.new_zeros(weight.shape[0])
        self.kw: dict[str, Any] = {"stride": module.stride, "padding": module.padding,
                                   "dilation": module.dilation, "groups": module.groups}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, **self.kw)

    def forward_abs(self, r: torch.Tensor) -> torch.Tensor:
        return F.conv2d(r, self.weight.abs(), None, **self.kw)

    def backward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, s = a.shape[:2]
        flat = a.reshape(n * s, *self.out_shape)
        back = conv2d_input((n * s, *self.in_shape), self.weight, flat,
                                          **self.kw)
        bias = (a.sum(dim=(3, 4)) * self.bias).sum(2)
        return back.view(n, s, *self.in_shape), bias

    def squared_gain(self, scale2: torch.Tensor) -> torch.Tensor:
        return F.conv2d(scale2, self.weight ** 2, None, **self.kw)


class Scale(Affine):
    """An elementwise ``x ↦ a x + b`` (normalisation, BatchNorm in eval mode)."""

    label = "Scale"

    def __init__(self, a: torch.Tensor, b: torch.Tensor, shape: tuple[int, ...]) -> None:
        super().__init__(shape, shape)
        self.a, self.b = a, b  # broadcastable to one sample's shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.a + self.b

    def forward_abs(self, r: torch.Tensor) -> torch.Tensor:
        return r * self.a.abs()

    def backward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.b.expand(self.in_shape)
        return a * self.a, (a * b).flatten(2).sum(2)


class Reshape(Affine):
    label = "Reshape"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def forward_abs(self, r: torch.Tensor) -> torch.Tensor:
        return self.forward(r)

    def backward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a.reshape(*a.shape[:2], *self.in_shape), a.new_zeros(a.shape[:2])


class ReLU(Op):
    label = "ReLU"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


class MaxPool(Op):
    """2-D max pooling without padding or dilation."""

    label = "MaxPool2d"

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int],
                 in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__(in_shape, out_shape)
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel, self.stride)

    @property
    def tiles(self) -> bool:
        """The windows tile the input exactly (stride = kernel, sides divisible): windows and
        scatters are reshapes, not ``unfold``/``fold``."""
        return self.kernel == self.stride and all(
            side % k == 0 for side, k in zip(self.in_shape[1:], self.kernel))

    def windows(self, t: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` → ``[N, C, L, k·k]``: each of the L pooling windows' values."""
        n, c = t.shape[:2]
        if self.tiles:
            (kh, kw), (h, w) = self.kernel, self.out_shape[1:]
            return t.reshape(n, c, h, kh, w, kw).permute(0, 1, 2, 4, 3, 5).reshape(
                n, c, h * w, kh * kw)
        cols = F.unfold(t.reshape(n * c, 1, *t.shape[2:]), self.kernel, stride=self.stride)
        return cols.view(n, c, cols.shape[1], cols.shape[2]).transpose(2, 3)

    def scatter(self, a: torch.Tensor) -> torch.Tensor:
        """``[N, S, C, L, k·k]`` per-window weights → ``[N, S, C, H, W]`` (overlaps summed)."""
        n, s, c = a.shape[:3]
        if self.tiles:
            (kh, kw), (h, w) = self.kernel, self.out_shape[1:]
            return a.reshape(n, s, c, h, w, kh, kw).permute(0, 1, 2, 3, 5, 4, 6).reshape(
                n, s, *self.in_shape)
        cols = a.reshape(n * s * c, a.shape[3], a.shape[4]).transpose(1, 2)
        out = F.fold(cols, self.in_shape[1:], self.kernel, stride=self.stride)
        return out.view(n, s, *self.in_shape)


@dataclass
class Network:
    """A target's network as a chain: ``ops`` applied in order to pixel-space inputs of
    ``input_shape`` give the target's logits."""

    ops: list[Op]
    input_shape: tuple[int, ...]
    name: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op.forward(x)
        return x


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _refuse(target: Target, what: str) -> BadInput:
    return BadInput(f"cannot bound model {target.name!r}: {what}; bounds (IBP, CROWN) take a "
                    f"chain of {', '.join(SUPPORTED)}")


def _module_op(target: Target, module: nn.Module, in_shape: tuple[int, ...],
               out_shape: tuple[int, ...], dtype: torch.dtype) -> Op | None:
    """The chain's op for a leaf module (None: the identity)."""
    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype)

    if isinstance(module, (nn.Dropout, nn.Identity)):
        return None
    if isinstance(module, nn.Linear):
        return Linear(cast(module.weight), cast(module.bias))  # type: ignore[arg-type]
    if isinstance(module, nn.Conv2d):
        return Conv(module, cast(module.weight), cast(module.bias),  # type: ignore[arg-type]
                    in_shape, out_shape)
    if isinstance(module, nn.ReLU):
        return ReLU(in_shape, out_shape)
    if isinstance(module, nn.Flatten):
        return Reshape(in_shape, out_shape)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _batchnorm(target, module, in_shape, dtype)
    if isinstance(module, nn.MaxPool2d):
        if _pair(module.padding) != (0, 0) or _pair(module.dilation) != (1, 1) \
                or module.ceil_mode:
            raise _refuse(target, f"{module} has padding, dilation or ceil_mode")
        return MaxPool(_pair(module.kernel_size), _pair(module.stride or module.kernel_size),
                       in_shape, out_shape)
    if isinstance(module, nn.AvgPool2d):
        return _avgpool(target, module, in_shape, out_shape, dtype)
    raise _refuse(target, f"layer {type(module).__name__} ({module}) is not supported")


def _batchnorm(target: Target, module: nn.BatchNorm1d | nn.BatchNorm2d,
               shape: tuple[int, ...], dtype: torch.dtype) -> Scale:
    if module.training or module.running_mean is None or module.running_var is None:
        raise _refuse(target, f"{module} is in training mode or keeps no running statistics "
                              f"(bounds take BatchNorm in eval mode)")
    var, mean = module.running_var.to(dtype), module.running_mean.to(dtype)
    gamma = module.weight.to(dtype) if module.weight is not None else torch.ones_like(var)
    beta = module.bias.to(dtype) if module.bias is not None else torch.zeros_like(var)
    a = gamma / torch.sqrt(var + module.eps)
    view = (-1,) + (1,) * (len(shape) - 1)
    return Scale(a.view(view), (beta - mean * a).view(view), shape)


def _avgpool(target: Target, module: nn.AvgPool2d, in_shape: tuple[int, ...],
             out_shape: tuple[int, ...], dtype: torch.dtype) -> Conv:
    """Average pooling as a depthwise convolution with uniform weights."""
    kernel = _pair(module.kernel_size)
    if module.ceil_mode or (_pair(module.padding) != (0, 0) and not module.count_include_pad) \
            or module.divisor_override is not None:
        raise _refuse(target, f"{module} uses ceil_mode, count_include_pad=False or a divisor")
    channels = in_shape[0]
    weight = torch.full((channels, 1, *kernel), 1.0 / math.prod(kernel), dtype=dtype,
                        device=target.device)
    conv = nn.Conv2d(channels, channels, kernel, stride=module.stride or kernel,
                     padding=module.padding, groups=channels, bias=False)
    return Conv(conv, weight, None, in_shape, out_shape)


_RELU_FUNCTIONS = (torch.relu, F.relu)
_FLATTEN_FUNCTIONS = (torch.flatten,)
_RESHAPE_METHODS = ("view", "reshape", "flatten")
_IGNORED_METHODS = ("size", "dim")


def _node_op(target: Target, gm: torch.fx.GraphModule, node: torch.fx.Node,
             dtype: torch.dtype) -> Op | None:
    in_meta = node.args[0].meta.get("tensor_meta") if node.args and isinstance(
        node.args[0], torch.fx.Node) else None
    out_meta = node.meta.get("tensor_meta")
    if in_meta is None or out_meta is None:
        raise _refuse(target, f"operation {node.format_node()} does not act on one tensor")
    in_shape, out_shape = tuple(in_meta.shape[1:]), tuple(out_meta.shape[1:])
    if node.op == "call_module":
        return _module_op(target, gm.get_submodule(str(node.target)), in_shape, out_shape,
                          dtype)
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return ReLU(in_shape, out_shape)
    if (node.op == "call_function" and node.target in _FLATTEN_FUNCTIONS) or (
            node.op == "call_method" and node.target in _RESHAPE_METHODS):
        if out_meta.shape[0] != in_meta.shape[0]:
            raise _refuse(target, f"{node.format_node()} mixes samples of a batch")
        return Reshape(in_shape, out_shape)
    if node.op == "call_method" and node.target == "relu":
        return ReLU(in_shape, out_shape)
    raise _refuse(target, f"operation {node.format_node()} is not supported")


def _is_tensor(node: torch.fx.Node) -> bool:
    return isinstance(node.meta.get("tensor_meta"), torch.fx.passes.shape_prop.TensorMetadata)


def _trace(target: Target) -> torch.fx.GraphModule:
    try:
        gm = torch.fx.symbolic_trace(target.model)
    except Exception as exc:  # noqa: BLE001 - a user's model, reported in one line
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _refuse(target, f"torch.fx cannot trace it ({detail})") from None
    probe = torch.zeros(2, *target.input_shape, device=target.device)
    with target.evaluating(), torch.no_grad():
        ShapeProp(gm).propagate(probe)
    return gm


def _chain(target: Target, gm: torch.fx.GraphModule, dtype: torch.dtype) -> list[Op]:
    ops: list[Op] = []
    previous: torch.fx.Node | None = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise _refuse(target, "its output is not the chain's last tensor")
            continue
        if node.op == "call_method" and node.target in _IGNORED_METHODS:
            continue
        if node.op == "get_attr" or not _is_tensor(node):
            raise _refuse(target, f"operation {node.format_node()} is not supported")
        tensor_inputs = [a for a in node.all_input_nodes if _is_tensor(a)]
        if tensor_inputs != [previous] or node.args[0] is not previous or (
                node.target is operator.getitem):
            raise _refuse(target, f"{node.format_node()} is not a chain step (a residual "
                                  f"connection or a concatenation)")
        op = _node_op(target, gm, node, dtype)
        if op is not None:
            ops.append(op)
        previous = node
    return ops


def _head(target: Target, out_shape: tuple[int, ...], dtype: torch.dtype) -> list[Op]:
    """A discriminator's one logit ``d`` as the target's two logits ``[0, d]``."""
    if target.kind != "discriminator":
        return []
    flat = [Reshape(out_shape, (1,))] if out_shape != (1,) else []
    weight = torch.tensor([[0.0], [1.0]], dtype=dtype, device=target.device)
    return [*flat, Linear(weight, None)]


def network_of(target: Target, dtype: torch.dtype = torch.float64) -> Network:
    """``target`` (normalisation, model, a discriminator's ``[0, d]``) as a chain of ops whose
    parameters are the model's own, in ``dtype`` (differentiable: certified training takes
    gradients through them). :class:`BadInput` naming the first unsupported layer, for a
    randomised target or one with a preprocessing step."""
    if target.randomised or target.preprocess is not None:
        what = target.preprocess.summary if target.preprocess is not None else "randomness"
        raise _refuse(target, f"it has a preprocessing step or draws randomness ({what})")
    gm = _trace(target)
    shape = tuple(target.input_shape)
    mean = target.mean.to(dtype).view(shape[0], *([1] * (len(shape) - 1)))
    std = target.std.to(dtype).view(shape[0], *([1] * (len(shape) - 1)))
    ops: list[Op] = [Scale(1 / std, -mean / std, shape)]
    ops += _chain(target, gm, dtype)
    out = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    ops += _head(target, tuple(out.meta["tensor_meta"].shape[1:]), dtype)
    return Network(_merge_linear_tail(ops), shape, target.name)


def _merge_linear_tail(ops: list[Op]) -> list[Op]:
    """Two final Linear ops as one (exact): a margin folded into it bounds tighter."""
    if len(ops) >= 2 and isinstance(ops[-1], Linear) and isinstance(ops[-2], Linear):
        last, before = ops[-1], ops[-2]
        merged = Linear(last.weight @ before.weight, last.weight @ before.bias + last.bias)
        return [*ops[:-2], merged]
    return ops


def check_network(target: Target, network: Network, x: torch.Tensor) -> None:
    """:class:`BadInput` unless the chain's logits match the target's on ``x`` (float32
    tolerance): the chain is what the bounds describe, so it must be the target."""
    with torch.no_grad(), target.evaluating():
        expected = target(x.float()).double()
        got = network.forward(x.to(network_dtype(network))).double()
    scale = 1.0 + float(expected.abs().max()) if expected.numel() else 1.0
    worst = float((got - expected).abs().max()) if expected.numel() else 0.0
    if worst > 1e-3 * scale:
        raise BadInput(f"cannot bound model {network.name!r}: the traced chain's logits differ "
                       f"from the model's by {worst:.3g} (its forward does something the "
                       f"trace did not see)")


def network_dtype(network: Network) -> torch.dtype:
    for op in network.ops:
        if isinstance(op, Scale):
            return op.a.dtype
    return torch.float64
