"""Certified lower bounds of a deterministic network's margins over an Lp ball intersected with
the input box, and the certificates built on them.

- **IBP**, interval bound propagation (Gowal et al., "On the Effectiveness of Interval Bound
  Propagation for Training Verifiably Robust Models", 2018): an interval per neuron, pushed
  through each layer; the margin ``z_y − z_j`` is folded into the last linear layer; an L2 ball's
  first linear layer is bounded through its rows' L2 norms (the dual norm), as the paper does
  for other norms.
- **CROWN** (Zhang, Weng, Chen, Hsieh & Daniel, "Efficient Neural Network Robustness
  Certification with General Activation Functions", NeurIPS 2018): each margin bounded by a
  backward pass of linear relaxations — ReLU's upper chord and its adaptive lower line (slope 1
  where ``u ≥ −l``, else 0) — concretised over the ball (``A x − eps ‖A‖_dual``) and over the
  box, the larger taken. ``crown`` computes every hidden ReLU's pre-activation bounds by
  CROWN too (only for the neurons IBP leaves unstable: a stable neuron's relaxation is exact
  whatever its bounds), intersected with IBP's; ``crown-ibp`` takes them from IBP (Zhang et al.,
  "Towards Stable and Efficient Training of Verifiably Robust Neural Networks", ICLR 2020),
  which is what certified training uses.
- Max pooling: the output is at least the window's input with the largest lower bound, and at
  most that input where its lower bound dominates every other upper bound, else the window's
  largest upper bound (DeepPoly's relaxation, Singh et al., POPL 2019).

Certification computes in float64 and certifies a margin only above
:data:`MARGIN_TOLERANCE` (relative to the logits' scale), which covers float32 evaluation's
rounding. Every bound is the network's (:mod:`bench.core.network`), whose chain is checked
against the target's forward before use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from bench.core.errors import BadInput
from bench.core.network import (
    Affine,
    Conv,
    Linear,
    MaxPool,
    Network,
    ReLU,
    Reshape,
    Scale,
    check_network,
    network_of,
)
from bench.core.norms import Norm
from bench.core.progress import progress_bar
from bench.core.target import Certificate, Target

Method = Literal["ibp", "crown-ibp", "crown"]
METHODS: tuple[str, ...] = get_args(Method)
NORMS = (Norm.LINF, Norm.L2)
MARGIN_TOLERANCE = 1e-4
"""A margin is certified when its lower bound exceeds this share of ``1 + max_j |z_j(x)|``:
float32 evaluation of the same network rounds by ~1e-6 of that scale."""
RADIUS_STEPS = 12
"""Bisection steps of a certified radius: its precision is ``eps_max / 2**12`` at worst
(eps_max: the box's side in Linf, its diagonal in L2; full CROWN's bracket is narrower)."""
CHUNK_ELEMENTS = 2 ** 24
"""The largest backward-pass tensor (elements) one CROWN chunk of intermediate bounds builds."""


def check_method(method: str, norm: Norm) -> Method:
    """``method`` as a :data:`Method`; :class:`BadInput` for another method or norm."""
    if method not in METHODS:
        raise BadInput(f"unknown certify method {method!r}; use one of {', '.join(METHODS)}")
    if norm not in NORMS:
        raise BadInput(f"bounds certify Linf and L2 balls, not {norm.value}")
    return method  # type: ignore[return-value]


@dataclass(frozen=True)
class Region:
    """The ``norm`` ball of radius ``eps`` (``[N]``) around ``x``, intersected with the box
    ``[lo, hi]``."""

    x: torch.Tensor
    eps: torch.Tensor
    norm: Norm
    lo: float
    hi: float

    def _eps(self) -> torch.Tensor:
        return self.eps.view(-1, *([1] * (self.x.ndim - 1)))

    def box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The smallest box holding the region (the ball's bounding box, clipped)."""
        e = self._eps()
        return (self.x - e).clamp_min(self.lo), (self.x + e).clamp_max(self.hi)

    def lower(self, a: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``[N, S]``: a lower bound of ``a·x' + bias`` over ``x'`` in the region, the larger
        of the box's and (L2) the ball's."""
        flat = a.flatten(2)
        bound = box_lower(flat, *self.box())
        if self.norm is Norm.L2:
            ball = torch.einsum("nsd,nd->ns", flat, self.x.flatten(1)) \
                - self.eps[:, None] * flat.norm(dim=2)
            bound = torch.maximum(bound, ball)
        return bound + bias


def box_lower(a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``[N, S]``: the smallest ``a·z`` over the box ``[lo, hi]`` (``a``: ``[N, S, *shape]``,
    ``lo``/``hi``: ``[N, *shape]``): ``a·mid − |a|·rad``."""
    flat = a.flatten(2)
    mid, rad = ((lo + hi) / 2).flatten(1), ((hi - lo) / 2).flatten(1)
    return torch.einsum("nsd,nd->ns", flat, mid) - torch.einsum("nsd,nd->ns", flat.abs(), rad)


Bounds = dict[int, tuple[torch.Tensor, torch.Tensor]]
"""The input interval of each ReLU and MaxPool op, by its index in the chain."""


def _relu_back(a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One ReLU of CROWN's backward pass for a lower bound of ``a·relu(z)``, ``z ∈ [lo, hi]``."""
    unstable = (lo < 0) & (hi > 0)
    width = torch.where(unstable, hi - lo, torch.ones_like(hi))
    up_slope = torch.where(unstable, hi / width, (lo >= 0).to(a.dtype))
    up_int = torch.where(unstable, -lo * hi / width, torch.zeros_like(hi))
    low_slope = torch.where(unstable, (hi >= -lo).to(a.dtype), (lo >= 0).to(a.dtype))
    pos = a.clamp(min=0)  # a ≥ 0 takes the lower line, a < 0 the upper chord
    new = torch.addcmul(a * up_slope.unsqueeze(1), pos, (low_slope - up_slope).unsqueeze(1))
    return new, torch.einsum("nsd,nd->ns", (a - pos).flatten(2), up_int.flatten(1))


def _maxpool_back(op: MaxPool, a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One max-pooling of CROWN's backward pass (lower bound of ``a·maxpool(z)``)."""
    wl, wu = op.windows(lo), op.windows(hi)  # [N, C, L, k·k]
    j = wl.argmax(3, keepdim=True)
    lj = wl.gather(3, j).squeeze(3)
    others = wu.scatter(3, j, torch.full_like(lj.unsqueeze(3), -torch.inf)).amax(3)
    dominant = lj >= others  # max = the j-th input exactly
    top = torch.where(dominant, torch.zeros_like(lj), wu.amax(3))  # else max <= top
    flat = a.flatten(3)  # [N, S, C, L]
    at_j = torch.where(dominant.unsqueeze(1), flat, flat.clamp(min=0))
    bias = torch.einsum("nsd,nd->ns", flat.clamp(max=0).flatten(2), top.flatten(1))
    n, s, c, windows = flat.shape
    where = j.unsqueeze(1).expand(n, s, c, windows, 1)
    spread = flat.new_zeros(n, s, c, windows, wl.shape[3]).scatter(4, where, at_j.unsqueeze(4))
    return op.scatter(spread), bias


def backward(network: Network, upto: int, a: torch.Tensor, bounds: Bounds
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN's backward pass: a linear lower bound ``a·z + 0`` on the output of
    ``ops[upto − 1]`` as ``(A, bias)`` on the network's input."""
    bias = a.new_zeros(a.shape[:2])
    for i in reversed(range(upto)):
        op = network.ops[i]
        if isinstance(op, Affine):
            a, b = op.backward(a)
        elif isinstance(op, ReLU):
            a, b = _relu_back(a, *bounds[i])
        else:
            assert isinstance(op, MaxPool)
            a, b = _maxpool_back(op, a, *bounds[i])
        bias = bias + b
    return a, bias


def _refine(network: Network, i: int, lo: torch.Tensor, hi: torch.Tensor, bounds: Bounds,
            region: Region) -> tuple[torch.Tensor, torch.Tensor]:
    """The input bounds of ReLU ``ops[i]``: IBP's, tightened by CROWN on the unstable
    neurons."""
    unstable = ((lo < 0) & (hi > 0)).flatten(1)
    count = unstable.sum(1)
    most = int(count.max()) if count.numel() else 0
    if most == 0:
        return lo, hi
    n, size = unstable.shape
    order = unstable.to(lo.dtype).argsort(dim=1, descending=True, stable=True)[:, :most]
    valid = torch.arange(most, device=lo.device)[None] < count[:, None]
    largest = max([size] + [math.prod(op.in_shape) for op in network.ops[:i]])
    chunk = max(1, CHUNK_ELEMENTS // (2 * n * largest))
    lo_flat, hi_flat = lo.flatten(1).clone(), hi.flatten(1).clone()
    for start in range(0, most, chunk):
        idx = order[:, start:start + chunk]
        s = idx.shape[1]
        spec = lo.new_zeros(n, 2 * s, size)
        rows = torch.arange(s, device=lo.device)[None].expand(n, s)
        samples = torch.arange(n, device=lo.device)[:, None]
        spec[samples, rows, idx] = 1.0
        spec[samples, rows + s, idx] = -1.0
        a, bias = backward(network, i, spec.view(n, 2 * s, *lo.shape[1:]), bounds)
        found = region.lower(a, bias)
        ok = valid[:, start:start + s]
        new_lo = torch.where(ok, torch.maximum(lo_flat.gather(1, idx), found[:, :s]),
                             lo_flat.gather(1, idx))
        new_hi = torch.where(ok, torch.minimum(hi_flat.gather(1, idx), -found[:, s:]),
                             hi_flat.gather(1, idx))
        lo_flat.scatter_(1, idx, new_lo)
        hi_flat.scatter_(1, idx, new_hi)
    return lo_flat.view_as(lo), hi_flat.view_as(hi)


@dataclass
class _FirstLayerL2:
    """An L2 ball's exact bounds on the first linear layer: its centre's image ± eps times
    each row's L2 norm (on the normalised input: the squared gains follow the scales)."""

    center: torch.Tensor
    scale2: torch.Tensor
    eps: torch.Tensor
    done: bool = False

    def step(self, op: Affine, lo: torch.Tensor, hi: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.done:
            return lo, hi
        if isinstance(op, Scale):
            self.center, self.scale2 = op.forward(self.center), self.scale2 * op.a ** 2
            return lo, hi
        if isinstance(op, Reshape):
            self.center, self.scale2 = op.forward(self.center), op.forward(self.scale2)
            return lo, hi
        self.done = True
        assert isinstance(op, (Linear, Conv))
        center = op.forward(self.center)
        radius = self.eps.view(-1, *([1] * (center.ndim - 1))) * op.squared_gain(
            self.scale2).clamp_min(0).sqrt()
        return torch.maximum(lo, center - radius), torch.minimum(hi, center + radius)


@dataclass
class Propagation:
    """One IBP pass (optionally with CROWN's intermediate bounds): the input interval of every
    ReLU and MaxPool, and the interval entering the last op."""

    bounds: Bounds = field(default_factory=dict)
    last_in: tuple[torch.Tensor, torch.Tensor] | None = None

    def subset(self, keep: torch.Tensor) -> Propagation:
        """The same bounds for the samples ``keep`` selects."""
        last = None if self.last_in is None else (self.last_in[0][keep], self.last_in[1][keep])
        return Propagation({i: (lo[keep], hi[keep]) for i, (lo, hi) in self.bounds.items()},
                           last)


def propagate(network: Network, region: Region, method: Method) -> Propagation:
    """Push the region's box through every op but the last (CROWN's refinement of each hidden
    ReLU's input when ``method`` is ``crown``)."""
    lo, hi = region.box()
    first = _FirstLayerL2(region.x, torch.ones_like(region.x[:1]), region.eps,
                          done=region.norm is not Norm.L2)
    out = Propagation()
    for i, op in enumerate(network.ops[:-1]):
        if isinstance(op, Affine):
            nlo, nhi = op.interval(lo, hi)
            lo, hi = first.step(op, nlo, nhi)
            continue
        first.done = True
        if isinstance(op, ReLU) and method == "crown":
            lo, hi = _refine(network, i, lo, hi, out.bounds, region)
        out.bounds[i] = (lo, hi)
        lo, hi = op.forward(lo), op.forward(hi)  # both are monotone
    out.last_in = (lo, hi)
    return out


def _final_ibp(network: Network, prop: Propagation, spec: torch.Tensor) -> torch.Tensor:
    """IBP's lower bounds of ``spec @ logits``, the spec folded into the last affine op."""
    last = network.ops[-1]
    assert prop.last_in is not None
    lo, hi = prop.last_in
    if isinstance(last, Affine):
        folded, bias = last.backward(spec)
        return box_lower(folded, lo, hi) + bias
    return box_lower(spec, last.forward(lo), last.forward(hi))


def _final_crown(network: Network, prop: Propagation, spec: torch.Tensor, region: Region
                 ) -> torch.Tensor:
    """CROWN's lower bounds of ``spec @ logits`` from the propagated intermediate bounds."""
    bounds = dict(prop.bounds)
    if isinstance(network.ops[-1], (ReLU, MaxPool)):
        assert prop.last_in is not None
        bounds[len(network.ops) - 1] = prop.last_in
    a, bias = backward(network, len(network.ops), spec, bounds)
    return region.lower(a, bias)


def margin_lower_bounds(network: Network, region: Region, spec: torch.Tensor,
                        method: Method) -> torch.Tensor:
    """``[N, S]``: lower bounds of ``spec @ logits`` (``spec``: ``[N, S, num_classes]``) over
    the region; for margins, ``spec`` rows are ``e_y − e_j``. CROWN's are never below IBP's
    (the larger of the two is taken: both are sound)."""
    prop = propagate(network, region, method)
    ibp = _final_ibp(network, prop, spec)
    if method == "ibp":
        return ibp
    return torch.maximum(ibp, _final_crown(network, prop, spec, region))


def training_bounds(network: Network, region: Region, spec: torch.Tensor, beta: float
                    ) -> torch.Tensor:
    """CROWN-IBP's training bound (Zhang et al., ICLR 2020, Eq. 9): ``β`` CROWN-IBP + ``(1 −
    β)`` IBP, differentiable in the network's parameters (``β = 0``: IBP alone)."""
    prop = propagate(network, region, "ibp")
    ibp = _final_ibp(network, prop, spec)
    if beta <= 0:
        return ibp
    return beta * _final_crown(network, prop, spec, region) + (1 - beta) * ibp


def _pick(spec: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Rows ``which`` (``[n, k]`` indices) of each sample's ``spec`` (``[n, S, C]``)."""
    return spec.gather(1, which[..., None].expand(-1, -1, spec.shape[2]))


def _others(which: torch.Tensor, count: int) -> torch.Tensor:
    """``[n, count − 1]``: every index below ``count`` but each sample's ``which`` (``[n, 1]``)."""
    every = torch.arange(count, device=which.device).expand(which.shape[0], count)
    return every[every != which].view(which.shape[0], count - 1)


def margin_spec(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``[N, K − 1, K]``: rows ``e_y − e_j`` for every class ``j ≠ y``."""
    eye = torch.eye(num_classes, dtype=dtype, device=labels.device)
    spec = eye[labels][:, None, :] - eye[None]  # [N, K, K]
    keep = ~torch.nn.functional.one_hot(labels, num_classes).bool()
    return spec[keep].view(labels.shape[0], num_classes - 1, num_classes)


def eps_max(norm: Norm, bounds: tuple[float, float], input_shape: tuple[int, ...]) -> float:
    """The radius past which the ball covers the whole box."""
    side = bounds[1] - bounds[0]
    return side if norm is Norm.LINF else side * float(math.prod(input_shape)) ** 0.5


@dataclass
class BoundCertifier:
    """Certifies a network's predictions of ``x`` over ``norm`` balls with ``method``, in
    batches of ``batch_size`` (CROWN's backward tensors grow with it)."""

    network: Network
    norm: Norm
    method: Method
    bounds: tuple[float, float]
    batch_size: int = 64
    passes: int = 0  # bound computations per sample so far

    def margins(self, x: torch.Tensor, logits: torch.Tensor, eps: torch.Tensor
                ) -> torch.Tensor:
        """``[N]``: relative to the logits' scale, the smallest lower bound of the margins of
        the prediction (the argmax of ``logits``, the network's at ``x``) over the balls of
        radii ``eps`` where it exceeds :data:`MARGIN_TOLERANCE` (certified); elsewhere a value
        at most the tolerance (a margin found uncertified ends that sample's work)."""
        out = []
        for xs, zs, es in zip(x.split(self.batch_size), logits.split(self.batch_size),
                              eps.split(self.batch_size)):
            region = Region(xs, es, self.norm, *self.bounds)
            spec = margin_spec(zs.argmax(1), zs.shape[1], xs.dtype)
            scale = 1.0 + zs.abs().amax(1)
            prop = propagate(self.network, region, "ibp")
            low = _final_ibp(self.network, prop, spec)
            if self.method != "ibp":
                self._tighten(low, MARGIN_TOLERANCE * scale, spec, region, prop)
            out.append(low.amin(1) / scale)
        return torch.cat(out) if out else x.new_zeros(0)

    def _tighten(self, low: torch.Tensor, floor: torch.Tensor, spec: torch.Tensor,
                 region: Region, prop: Propagation) -> None:
        """Raise IBP's bounds ``low`` (``[n, S]``) in place to the method's, for the samples
        IBP leaves uncertified (a margin at most ``floor``): first each one's weakest margin
        under IBP, then the others only where that one is certified (a sample with one
        uncertified margin is uncertified whatever the others' bounds)."""
        todo = torch.nonzero(low.amin(1) <= floor).flatten()
        if todo.numel() == 0:
            return
        sub = Region(region.x[todo], region.eps[todo], region.norm, region.lo, region.hi)
        tight = prop.subset(todo) if self.method == "crown-ibp" else \
            propagate(self.network, sub, self.method)
        weakest = low[todo].argmin(1, keepdim=True)  # [m, 1]
        rows = todo[:, None]
        low[rows, weakest] = torch.maximum(
            low[rows, weakest], self._final(tight, _pick(spec[todo], weakest), sub))
        held = torch.nonzero(low[rows, weakest].squeeze(1) > floor[todo]).flatten()
        if held.numel() == 0 or spec.shape[1] == 1:
            return
        others = _others(weakest[held], spec.shape[1])  # [k, S − 1]
        rows = todo[held][:, None]
        sub = Region(sub.x[held], sub.eps[held], sub.norm, sub.lo, sub.hi)
        low[rows, others] = torch.maximum(
            low[rows, others], self._final(tight.subset(held), _pick(spec[rows[:, 0]], others),
                                           sub))

    def _final(self, prop: Propagation, spec: torch.Tensor, region: Region) -> torch.Tensor:
        """The method's lower bounds of ``spec @ logits`` from its propagated bounds (full
        CROWN's intermediate bounds also tighten the interval the IBP bound folds)."""
        crown = _final_crown(self.network, prop, spec, region)
        return crown if self.method == "crown-ibp" else \
            torch.maximum(crown, _final_ibp(self.network, prop, spec))

    @torch.no_grad()
    def certify(self, x: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
        """``[N]``: the prediction at ``x`` is constant over each ball (radius ``eps``)."""
        x = x.to(torch.float64)
        eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self._holds(x, self.network.forward(x), eps_t,
                           torch.arange(x.shape[0], device=x.device))

    def _holds(self, x: torch.Tensor, logits: torch.Tensor, radii: torch.Tensor,
               idx: torch.Tensor) -> torch.Tensor:
        """One pass: whether the samples ``idx`` are certified at their ``radii``."""
        self.passes += 1
        return self.margins(x[idx], logits[idx], radii[idx]) > MARGIN_TOLERANCE

    def _bracket(self, x: torch.Tensor, logits: torch.Tensor, top: torch.Tensor, bar: Any
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, ``(low, high)``: the largest radius certified and the first one not,
        among ``top / 2**RADIUS_STEPS`` doubled until it fails (``high`` stays ``top`` where
        none fails). Full CROWN refines every unstable neuron, so its cost grows with the
        radius: the bisection then probes radii near the answer, never half the box."""
        low, high = torch.zeros_like(top), top.clone()
        probe = top / 2 ** RADIUS_STEPS
        open_ = torch.ones_like(top, dtype=torch.bool)
        while bool(open_.any()):
            if bar is not None:
                bar.total += 1
                bar.update(1)
            idx = torch.nonzero(open_).flatten()
            ok = self._holds(x, logits, probe, idx)
            low[idx[ok]], high[idx[~ok]] = probe[idx[ok]], probe[idx[~ok]]
            open_[idx[~ok]] = False
            probe = probe * 2
            open_ &= probe < top
        return low, high

    @torch.no_grad()
    def radius(self, x: torch.Tensor, bar: Any = None) -> torch.Tensor:
        """``[N]``: the largest radius certified, by bisection (:data:`RADIUS_STEPS`); −1
        where not even the clean margin clears the tolerance. Full CROWN bisects inside the
        bracket of :meth:`_bracket`. ``bar``: a progress bar advanced once per pass."""
        x = x.to(torch.float64)
        logits = self.network.forward(x)
        low = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        at_zero = self._holds(x, logits, low, torch.arange(x.shape[0], device=x.device))
        x, logits, low = x[at_zero], logits[at_zero], low[at_zero]
        high = torch.full_like(low, eps_max(self.norm, self.bounds, tuple(x.shape[1:])))
        precision = high / 2 ** RADIUS_STEPS
        if self.method == "crown":
            low, high = self._bracket(x, logits, high, bar)
        for _ in range(RADIUS_STEPS):
            if bar is not None:
                bar.update(1)
            idx = torch.nonzero(high - low > precision * (1 + 1e-9)).flatten()
            if idx.numel() == 0:
                continue
            mid = (low + high) / 2
            ok = self._holds(x, logits, mid, idx)
            low[idx[ok]], high[idx[~ok]] = mid[idx[ok]], mid[idx[~ok]]
        radius = torch.full_like(at_zero, -1.0, dtype=low.dtype)
        radius[at_zero] = low
        return radius


def bound_certificate(target: Target, x: torch.Tensor, *, norm: Norm, method: str,
                      eps: tuple[float, ...] = (), batch_size: int = 64,
                      progress: bool = False) -> Certificate:
    """``target``'s certificate on ``x``: its prediction, the largest radius certified by
    bisection (−1 where not even the clean margin clears the tolerance), and certification
    computed at each of ``eps`` (a radius certified also covers every smaller ball)."""
    checked_method = check_method(method, norm)
    network = network_of(target)
    check_network(target, network, x[:16])
    certifier = BoundCertifier(network, norm, checked_method, target.bounds, batch_size)
    x64 = x.to(torch.float64)
    with torch.no_grad():
        pred = network.forward(x64).argmax(1)
    with progress_bar(enabled=progress, total=RADIUS_STEPS + len(eps), leave=False,
                      desc=f"certify {method} {norm.value}", unit="pass") as bar:
        radius = certifier.radius(x64, bar)
        at = {}
        for e in eps:
            at[float(e)] = (radius >= e) | certifier.certify(x64, float(e))
            bar.update(1)
    return Certificate(
        pred=torch.where(radius >= 0, pred, torch.full_like(pred, -1)).to(x.device),
        radius=radius.clamp_min(0).float().to(x.device),
        n_forward_per_sample=certifier.passes, norm=norm.value, method=method,
        certified={e: mask.to(x.device) for e, mask in at.items()})
