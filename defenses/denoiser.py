"""The high-level representation guided denoiser (HGD).

Liao, Liang, Dong, Pang, Hu, Zhu, "Defense against Adversarial Attacks Using High-Level
Representation Guided Denoiser", CVPR 2018. A U-Net ("DUNET": an encoder–decoder with lateral
skip connections) predicts the adversarial noise and subtracts it; the classifier sees the
denoised image, so ``denoiser ∘ classifier`` is the defended target. The denoiser is trained on
(adversarial, clean) pairs made by registered attacks on the undefended classifier over a range
of eps, with one of the paper's losses:

- ``pixel``: L1 between the denoised and the clean image (PGD, the pixel-guided denoiser);
- ``feature``: L1 between the classifier's last hidden features of the two (FGD);
- ``logit``: L1 between their logits (LGD, the paper's best);
- ``class``: cross-entropy of the denoised image's logits with the true label (CGD).

Athalye, Carlini, Wagner (ICML 2018) and Athalye & Carlini (2018) broke it with white-box attacks
through denoiser and classifier together: sweep it with ``threats = ["adaptive", "transfer"]``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attacks import ATTACKS, Attack, ThreatModel
from bench.core.datasets import Split
from bench.core.errors import BadInput
from bench.core.target import Target
from bench.core.training import fit
from bench.core.zoo import TrainRecipe
from defenses.base import register_defense, require_classifier

LOSSES = ("pixel", "feature", "logit", "class")


@dataclass(frozen=True)
class HGDParams:
    """HGD parameters (defaults: the logit-guided denoiser, FGSM and PGD-10 training pairs).

    ``attacks``: registered attacks making the training pairs, used in turn per batch, each at an
    eps drawn uniformly from ``[eps_min, eps_max]``. ``attack_steps``: steps of iterative ones.
    ``clean_fraction``: share of each batch given as clean input (the denoiser must leave clean
    images alone). ``depth``: down-sampling stages of the U-Net (H and W must be divisible by
    ``2**depth``); ``width``: channels of its first stage.
    """

    loss: str = "logit"
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    norm: str = "linf"
    eps_min: float = 0.05
    eps_max: float = 0.3
    attack_steps: int = 10
    clean_fraction: float = 0.25
    depth: int = 2
    width: int = 32
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "onecycle"

    def __post_init__(self) -> None:
        object.__setattr__(self, "attacks", tuple(self.attacks))
        if self.loss not in LOSSES:
            raise BadInput(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not self.attacks:
            raise BadInput("attacks must name at least one registered attack")
        if not 0 <= self.eps_min <= self.eps_max or self.eps_max <= 0:
            raise BadInput(f"need 0 <= eps_min <= eps_max and eps_max > 0, got "
                           f"[{self.eps_min}, {self.eps_max}]")
        if self.depth < 1 or self.width < 1 or self.batch_size < 1 or self.attack_steps < 1:
            raise BadInput("depth, width, batch_size and attack_steps must be >= 1")
        if not 0 <= self.clean_fraction < 1:
            raise BadInput(f"clean_fraction must lie in [0, 1), got {self.clean_fraction}")
        self.recipe()  # validates the training recipe
        self.inner_attacks()  # validates the attacks, the norm and eps_max

    def recipe(self) -> TrainRecipe:
        """How the denoiser trains."""
        return TrainRecipe(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           optimizer=self.optimizer, schedule=self.schedule)

    def inner_attacks(self) -> tuple[Attack, ...]:
        """The attacks making the training pairs, at budget ``eps_max``, params parsed."""
        out = []
        for name in self.attacks:
            spec = ATTACKS.get(name)
            if spec.minimal or spec.needs_fit_data:
                raise BadInput(f"attack {name!r} cannot make HGD training pairs (it needs an "
                               f"eps budget and no training data)")
            fields = {f.name for f in dataclasses.fields(spec.params_cls)}
            out.append(Attack.create(spec, norm=self.norm, eps=self.eps_max, params=(
                {"steps": self.attack_steps} if "steps" in fields else {})))
        return tuple(out)


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DUNet(nn.Module):
    """Liao et al.'s denoising U-Net: a forward path of strided conv blocks, a backward path that
    up-samples and fuses the lateral features, a 1×1 conv predicting the noise ``dx``; returns
    ``x - dx``."""

    def __init__(self, channels: int, width: int = 32, depth: int = 2) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.stem = _block(channels, widths[0])
        self.down = nn.ModuleList(_block(widths[i], widths[i + 1], stride=2)
                                  for i in range(depth))
        self.up = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i])
                                for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], channels, 1)
        nn.init.zeros_(self.head.weight)  # starts as the identity: dx = 0
        nn.init.zeros_(self.head.bias)  # type: ignore[arg-type]  # a Conv2d with bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x * 2 - 1)
        lateral = [h]
        for down in self.down:
            h = down(h)
            lateral.append(h)
        lateral.pop()
        for up in self.up:
            skip = lateral.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = up(torch.cat([h, skip], dim=1))
        return x - self.head(h)


class DenoisedClassifier(nn.Module):
    """``classifier(denoiser(x))``, both in pixel space (the classifier normalises inside)."""

    def __init__(self, denoiser: DUNet, classifier: Target) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoiser(x))


def _last_linear(target: Target) -> nn.Linear | None:
    linears = [m for m in target.model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def check_hgd(base: Target, params: HGDParams) -> None:
    """Raise :class:`BadInput` if a denoiser of ``params`` cannot wrap ``base``."""
    require_classifier(base, "the HGD denoiser")
    if len(base.input_shape) != 3:
        raise BadInput(f"the HGD denoiser needs image inputs [C, H, W]; target {base.name!r} "
                       f"takes {base.input_shape}")
    _, h, w = base.input_shape
    stride = 2**params.depth
    if h % stride or w % stride:
        fits = max(d for d in range(0, 8) if h % 2**d == 0 and w % 2**d == 0)
        raise BadInput(f"a denoiser of depth {params.depth} needs H and W divisible by {stride}; "
                       f"target {base.name!r} takes {h}x{w}; use depth <= {fits}")
    if params.loss == "feature" and _last_linear(base) is None:
        raise BadInput(f"the feature-guided loss reads the input of the classifier's last "
                       f"nn.Linear; target {base.name!r} has none (use loss = 'logit')")
    ThreatModel.parse(params.norm, params.eps_max).check_against(base.bounds, base.input_shape)


def build_hgd(base: Target, params: HGDParams) -> Target:
    """An untrained (identity-initialised) denoiser in front of ``base``."""
    denoiser = DUNet(base.input_shape[0], params.width, params.depth).to(base.device)
    return Target(DenoisedClassifier(denoiser, base), num_classes=base.num_classes,
                  input_shape=base.input_shape, bounds=base.bounds, kind=base.kind,
                  name=f"{base.name}+hgd").to(base.device)


def _last_hidden(base: Target) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> the input of the classifier's last nn.Linear`` (its last hidden features)."""
    layer = _last_linear(base)
    assert layer is not None
    captured: list[torch.Tensor] = []

    def features(x: torch.Tensor) -> torch.Tensor:
        handle = layer.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
        try:
            base(x)
        finally:
            handle.remove()
        return captured.pop()
    return features


def _guided_loss(base: Target, params: HGDParams
                 ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(denoised, clean, y) -> loss`` for the chosen guidance; the classifier is frozen."""
    if params.loss == "pixel":
        return lambda denoised, clean, y: (denoised - clean).abs().mean()
    if params.loss == "class":
        return lambda denoised, clean, y: F.cross_entropy(base(denoised), y)
    represent = base if params.loss == "logit" else _last_hidden(base)

    def representation_l1(denoised: torch.Tensor, clean: torch.Tensor, y: torch.Tensor
                          ) -> torch.Tensor:
        with torch.no_grad():
            reference = represent(clean)
        return (represent(denoised) - reference).abs().mean()
    return representation_l1


def fit_hgd(base: Target, train: Split, params: HGDParams, generator: torch.Generator, *,
            progress: bool = True) -> Target:
    """Train a denoiser in front of the frozen ``base`` on (adversarial, clean) pairs."""
    device = base.device
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    defended = build_hgd(base, params)
    denoiser = typing.cast(DenoisedClassifier, defended.model).denoiser
    grad_flags = [(p, p.requires_grad) for p in base.parameters()]
    for p in base.parameters():
        p.requires_grad_(False)
    attack_gen = torch.Generator(device=device).manual_seed(seed)
    eps_gen = torch.Generator().manual_seed(seed + 1)
    guided = _guided_loss(base, params)
    pending: list[torch.Tensor] = []  # the clean batch of the pair being trained on
    batch_no = [0]
    attacks = params.inner_attacks()

    def perturb(x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        attack = attacks[batch_no[0] % len(attacks)]
        batch_no[0] += 1
        u = float(torch.rand((), generator=eps_gen))
        eps = params.eps_min + (params.eps_max - params.eps_min) * u
        n_clean = int(round(params.clean_fraction * x.shape[0]))
        adv = attack.at(eps)(base, x[n_clean:], y[n_clean:], generator=attack_gen)
        pending.append(x)
        return torch.cat([x[:n_clean], adv.x_adv.detach()]), y

    def loss(x_in: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        clean = pending.pop()
        return guided(denoiser(x_in), clean, y), None

    recipe = params.recipe()
    try:
        with base.evaluating():  # the classifier stays frozen in eval mode
            history = fit(denoiser, train, recipe, seed=seed, device=device, progress=progress,
                          desc=f"hgd {params.loss}", loss=loss, perturb=perturb)
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
    defended.card = {"history": history}
    return defended


@register_defense("hgd", params=HGDParams, build=build_hgd, check=check_hgd)
def hgd(base: Target, train: Split, params: HGDParams, generator: torch.Generator, *,
        progress: bool = True) -> Target:
    """U-Net denoiser guided by the classifier's high-level representations (Liao et al. 2018)."""
    return fit_hgd(base, train, params, generator, progress=progress)
