"""Models the user brings: declared in a sweep's ``[[models]]`` table or passed from Python.

A :class:`UserModel` says how to build the network (``factory``), which weights to load, and the
pixel space it is attacked in (input shape, classes, bounds, normalisation inside the target):

- ``factory = "module:callable"`` calls the user's own code with ``kwargs`` (like a conftest, it
  runs as the user; the module is imported from the config file's folder or the installed
  environment, never from a results directory) and must return an ``nn.Module``;
- ``"torchvision:<name>"`` / ``"timm:<name>"`` build that library's architecture with no
  pretrained weights (nothing is downloaded);
- ``"python"``: a module object passed to :func:`bench.benchmark` (not from a config file).

Weights are ``.safetensors``, or ``.pt`` / ``.pth`` read with ``torch.load(weights_only=True)``,
so no checkpoint ever runs code; a ``{"state_dict": ...}`` (or ``"model"``) wrapper and the
``module.`` prefixes of a ``DataParallel`` save are taken off. The model's identity — a SHA-256
of its weights file (or of an in-memory module's tensors) with the factory, kwargs and pixel
space — goes into every cell id: a changed checkpoint is a new cell, an unchanged one resumes.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import json
import pickle
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.core.checkpoints import file_sha256, state_fingerprint
from bench.core.errors import BadInput
from bench.core.target import Preprocessing, Target

KINDS = ("classifier", "discriminator", "generator")
"""A classifier and a discriminator are attacked; a generator supplies a discriminator's fake
images."""
OUTPUTS = ("logit", "probability", "critic")
"""What a discriminator's one output is: a logit (sigmoid outside the network), a probability
(sigmoid inside: advbench attacks the logit before it), or a Wasserstein critic's unbounded
score (advbench attacks ``score - t`` with ``t`` calibrated on real vs generated images)."""


@dataclass(frozen=True)
class UserModel:
    """A user's model and the pixel space it is attacked in (see the module doc)."""

    name: str
    factory: str
    input_shape: tuple[int, ...]
    num_classes: int
    kwargs_json: str = "{}"
    weights: Path | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    kind: str = "classifier"
    base_dir: Path = Path(".")
    module: nn.Module | None = field(default=None, compare=False, repr=False)
    output: str = "logit"  # discriminators: see OUTPUTS
    generator: str = ""  # discriminators: the label of the generator of their fake images
    latent_shape: tuple[int, ...] = ()  # generators: the shape of one noise sample
    output_range: tuple[float, float] = (-1.0, 1.0)  # generators: the range of their images
    generator_identity: str = ""  # discriminators: their generator's identity (fake images)
    randomised: bool = False  # the forward (or preprocess) draws randomness
    label_only: bool = False  # an API-like model: only label-only attacks and transfers
    preprocess: str = ""  # "module:callable", a step applied to pixels before the network
    bpda: str = ""  # "module:callable" or "identity": the preprocess's differentiable stand-in
    description: str = field(default="", compare=False)  # shown on its published page
    paper: str = field(default="", compare=False)  # a link, shown on its published page

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(json.loads(self.kwargs_json))

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights file, or of an in-memory module's state."""
        if self.module is not None:
            return state_fingerprint(self.module)
        if self.weights is None:
            return "none"
        return _cached_sha256(self.weights, *_stamp(self.weights))

    def entry(self) -> dict[str, Any]:
        """The ``[[models]]`` table that gives this model (weights as an absolute path): what a
        published page's reproduction snippet holds."""
        table: dict[str, Any] = {
            "name": self.name, "factory": self.factory, "input_shape": list(self.input_shape),
            "kwargs": json.loads(self.kwargs_json), "bounds": list(self.bounds),
            "kind": self.kind}
        if self.kind == "classifier":
            table["num_classes"] = self.num_classes
        if self.weights is not None:
            table["weights"] = str(Path(self.weights).resolve())
        table.update({k: list(v) for k, v in (("mean", self.mean), ("std", self.std))
                      if v is not None})
        if self.kind == "discriminator":
            table.update(output=self.output, generator=self.generator)
        if self.kind == "generator":
            table.update(latent_shape=list(self.latent_shape),
                         output_range=list(self.output_range))
        if self.randomised or self.preprocess:
            table.update(randomised=self.randomised, preprocess=self.preprocess,
                         bpda=self.bpda)
        if self.label_only:
            table["label_only"] = True
        return table

    @property
    def identity(self) -> str:
        """What the model's results depend on: weights, architecture and pixel space."""
        blob = json.dumps({
            "factory": self.factory, "kwargs": self.kwargs, "weights": self.weights_sha256,
            "input_shape": self.input_shape, "num_classes": self.num_classes,
            "bounds": self.bounds, "mean": self.mean, "std": self.std, "kind": self.kind,
            **({"output": self.output, "generator": self.generator_identity}
               if self.kind == "discriminator" else {}),
            **({"latent_shape": self.latent_shape, "output_range": self.output_range}
               if self.kind == "generator" else {}),
            **({"randomised": self.randomised, "preprocess": self.preprocess,
                "bpda": self.bpda} if self.randomised or self.preprocess else {}),
        }, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def network(self) -> nn.Module:
        """The network with its weights loaded (on the CPU)."""
        module = self.module if self.module is not None else build_module(
            self.name, self.factory, self.kwargs, self.base_dir)
        if self.weights is not None:
            load_weights(self.name, module, self.weights)
        return module

    def target(self, device: torch.device, threshold: float | None = None) -> Target:
        """The attacked :class:`Target`, checked on a probe batch; a discriminator's one logit
        ``d`` is exposed as ``[0, d]`` (class 1 = real), a critic's score ``s`` as
        ``[0, s - threshold]`` (see :func:`calibrate_threshold`)."""
        if self.kind == "generator":
            raise BadInput(f"model {self.name!r} is a generator; attack the discriminator that "
                           f"names it")
        network = self.network()
        if self.kind == "discriminator" and self.output == "probability":
            network = logit_of(self.name, network)
        if self.kind == "discriminator" and self.output == "critic":
            network = Shifted(network, 0.0 if threshold is None else threshold)
        target = Target.from_module(
            network, input_shape=self.input_shape, num_classes=self.num_classes,
            bounds=self.bounds, mean=self.mean, std=self.std, name=self.name, device=device,
            kind="discriminator" if self.kind == "discriminator" else "classifier")
        target.declared_random = target.global_rng = self.randomised
        if self.preprocess:
            where = f"model {self.name!r}"
            substitute = _identity if self.bpda == "identity" else (
                load_callable(f"{where} bpda", self.bpda, self.base_dir) if self.bpda else None)
            target.preprocess = UserPreprocessing(
                load_callable(f"{where} preprocess", self.preprocess, self.base_dir),
                substitute, self.randomised, self.preprocess)
            if self.bpda:
                target.preprocess.stand_in = self.bpda
            target.probe()
        return target

    def sampler(self, device: torch.device) -> ImageSampler:
        """A generator's images in [0, 1], checked on a probe sample."""
        if self.kind != "generator":
            raise BadInput(f"model {self.name!r} is a {self.kind}, not a generator")
        sampler = ImageSampler(self.name, self.network().to(device).eval(), self.latent_shape,
                               self.output_range, self.input_shape)
        sampler.sample(2, 0, device)
        return sampler


class Shifted(nn.Module):
    """A critic's score minus its real/fake threshold."""

    def __init__(self, body: nn.Module, threshold: float) -> None:
        super().__init__()
        self.body = body
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) - self.threshold


def calibrate_threshold(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The score threshold that best separates a critic's ``real`` from its ``fake`` scores:
    the midpoint between two sorted scores that maximises balanced accuracy (the mean of the
    true-real and true-fake rates), "real" meaning a score above it.

    :class:`BadInput` when the scores are not finite or no threshold separates them better than
    chance (a constant critic, or one that ranks fakes above reals)."""
    scores = torch.cat([real, fake]).double()
    if not (len(real) and len(fake)) or not bool(torch.isfinite(scores).all()):
        raise BadInput(f"cannot calibrate a critic's threshold on {len(real)} real and "
                       f"{len(fake)} fake scores, some not finite: it needs finite scores of "
                       f"both")
    is_real = torch.cat([torch.ones_like(real), torch.zeros_like(fake)]).double()
    order = scores.argsort()
    scores, is_real = scores[order], is_real[order]
    # threshold just above the k-th lowest score: the k lowest are called fake
    fake_below = torch.cat([torch.zeros(1, dtype=torch.double), (1 - is_real).cumsum(0)])
    real_below = torch.cat([torch.zeros(1, dtype=torch.double), is_real.cumsum(0)])
    balanced = (fake_below / len(fake) + (len(real) - real_below) / len(real)) / 2
    # a threshold lies between two different scores: no cut between tied ones
    between = torch.ones(len(scores) + 1, dtype=torch.bool)
    between[1:-1] = scores[1:] > scores[:-1]
    balanced = torch.where(between, balanced, torch.full_like(balanced, -1.0))
    k = int(balanced.argmax())
    if float(balanced[k]) <= 0.5:
        spread = f"all scores equal {float(scores[0]):.4g}" if bool(
            (scores == scores[0]).all()) else "it ranks fakes at least as high as reals"
        raise BadInput(f"cannot calibrate a critic's real/fake threshold: no threshold tells "
                       f"real from fake better than chance ({spread}); train the critic, or "
                       f"check that a high score means real")
    if k == 0:
        return float(scores[0]) - 1.0
    if k == len(scores):
        return float(scores[-1]) + 1.0
    return float((scores[k - 1] + scores[k]) / 2)


class LogitOf(nn.Module):
    """A network ending in a sigmoid, without it: its output is the logit."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def logit_of(name: str, network: nn.Module) -> nn.Module:
    """The logit of a discriminator whose output is a probability, read before its final
    sigmoid (an ``nn.Sigmoid`` that ends an ``nn.Sequential``, at any depth), so it never
    saturates; :class:`BadInput` when no such sigmoid is found."""
    path: list[nn.Sequential] = []
    module = network
    while isinstance(module, nn.Sequential) and len(module):
        path.append(module)
        module = module[-1]
    if not path or not isinstance(module, nn.Sigmoid):
        raise BadInput(f"model {name!r}: output = \"probability\" needs the network to end "
                       f"in an nn.Sigmoid (the last module of an nn.Sequential) so advbench can "
                       f"attack the logit before it; otherwise return the logit and declare "
                       f"output = \"logit\"")
    body: nn.Module = nn.Identity()
    for seq in reversed(path):  # rebuild the chain of Sequentials without the final sigmoid
        children = list(seq.children())[:-1]
        body = nn.Sequential(*children, body) if not isinstance(body, nn.Identity) else \
            nn.Sequential(*children)
    return LogitOf(body)


@dataclass(frozen=True)
class ImageSampler:
    """Images from a user's generator, mapped from ``output_range`` into [0, 1]."""

    name: str
    network: nn.Module
    latent_shape: tuple[int, ...]
    output_range: tuple[float, float]
    image_shape: tuple[int, ...]

    @torch.no_grad()
    def sample(self, n: int, seed: int, device: torch.device | None = None) -> torch.Tensor:
        """``n`` images in [0, 1] from noise seeded by ``seed``."""
        device = device or next(self.network.parameters(), torch.empty(0)).device
        g = torch.Generator(device="cpu").manual_seed(seed)
        z = torch.randn(n, *self.latent_shape, generator=g).to(device)
        try:
            out = self.network(z).float()
        except Exception as exc:  # noqa: BLE001 - the user's generator
            raise BadInput(f"model {self.name!r} fails on noise of shape "
                           f"{[n, *self.latent_shape]} ({type(exc).__name__}: {exc}); check "
                           f"latent_shape") from None
        if tuple(out.shape) != (n, *self.image_shape):
            raise BadInput(f"model {self.name!r} makes images of shape {list(out.shape[1:])}, "
                           f"its discriminator takes {list(self.image_shape)}")
        if not bool(torch.isfinite(out).all()):
            raise BadInput(f"model {self.name!r} makes NaN or infinite images")
        lo, hi = self.output_range
        return ((out - lo) / (hi - lo)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class UserGAN:
    """A user's discriminator (the attacked target) with the generator of its fake images."""

    target: Target
    sampler: ImageSampler

    def sample(self, n: int, seed: int, device: torch.device | None = None) -> torch.Tensor:
        return self.sampler.sample(n, seed, device)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise BadInput(f"weights file {path} cannot be read ({exc.strerror})") from None
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: Path, mtime_ns: int, size: int) -> str:
    return file_sha256(path)


@contextlib.contextmanager
def _importable_from(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))


def _close(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _library_builder(where: str, library: str, arch: str) -> Any:
    if library == "torchvision":
        import torchvision

        names = torchvision.models.list_models()
        if arch not in names:
            raise BadInput(f"{where}: torchvision has no model {arch!r}{_close(arch, names)}")
        return functools.partial(torchvision.models.get_model, arch, weights=None)
    try:
        import timm
    except ImportError:
        raise BadInput(f"{where}: 'timm:' models need timm: pip install 'advbench[timm]'"
                       ) from None
    names = timm.list_models()
    if arch not in names:
        raise BadInput(f"{where}: timm has no model {arch!r}{_close(arch, names)}")
    return functools.partial(timm.create_model, arch, pretrained=False)


def load_callable(where: str, spec: str, base_dir: Path) -> Any:
    """The callable ``spec`` = ``"module:attr"`` names, imported from ``base_dir`` or the
    environment; :class:`BadInput` saying ``where`` when it cannot be."""
    library, sep, attr = spec.partition(":")
    if not sep or not library or not attr:
        raise BadInput(f"{where}: expected 'module:callable', got {spec!r}")
    try:
        with _importable_from(base_dir):
            module = importlib.import_module(library)
    except Exception as exc:  # noqa: BLE001 - the user's module: report any failure in one line
        raise BadInput(f"{where}: cannot import {library!r} from {base_dir} or the "
                       f"environment ({type(exc).__name__}: {exc})") from None
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise BadInput(f"{where}: module {library!r} has no attribute {attr!r}")
        found = getattr(found, part)
    if not callable(found):
        raise BadInput(f"{where}: {spec!r} is not callable")
    return found


class UserPreprocessing(Preprocessing):
    """A user's own preprocessing ``step(x) -> x`` in front of their network, with its
    differentiable stand-in for BPDA (``substitute``; the identity when declared so). A
    randomised step draws from torch's global generator, which the target seeds from the
    generator it is handed (:attr:`Target.global_rng`)."""

    def __init__(self, step: Any, substitute: Any | None, randomised: bool, summary: str
                 ) -> None:
        super().__init__()
        self.step, self.substitute_fn = step, substitute
        self.randomised = randomised
        self.summary = summary

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.step(x)

    def substitute(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.substitute_fn is None else self.substitute_fn(x)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def build_module(name: str, factory: str, kwargs: Mapping[str, Any], base_dir: Path
                 ) -> nn.Module:
    """Instantiate ``factory`` (see the module doc); :class:`BadInput` naming the model on an
    import error, a factory that raises, or one that returns no ``nn.Module``."""
    where = f"model {name!r}"
    library, sep, attr = factory.partition(":")
    if not sep or not library or not attr:
        raise BadInput(f"{where}: factory must be 'module:callable', 'torchvision:<name>' or "
                       f"'timm:<name>', got {factory!r}")
    if library in ("torchvision", "timm"):
        builder = _library_builder(where, library, attr)
    else:
        builder = load_callable(where, factory, base_dir)
    try:
        network = builder(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's factory
        raise BadInput(f"{where}: factory {factory!r} raised {type(exc).__name__}: {exc}"
                       ) from None
    if not isinstance(network, nn.Module):
        raise BadInput(f"{where}: factory {factory!r} returned {type(network).__name__}, not "
                       f"a torch.nn.Module")
    return network


def read_state_dict(name: str, path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``weights_only`` torch file, unwrapped."""
    where = f"model {name!r}"
    if not path.is_file():
        raise BadInput(f"{where}: weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        elif path.suffix in (".pt", ".pth", ".bin"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise BadInput(f"{where}: weights {path} must be .safetensors, .pt or .pth")
    except BadInput:
        raise
    except pickle.UnpicklingError as exc:
        raise BadInput(
            f"{where}: {path} needs full unpickling ({str(exc).splitlines()[0]}), which could "
            f"run code; save only its tensors: torch.save(model.state_dict(), path) or "
            f"safetensors.torch.save_file(model.state_dict(), path)") from None
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise BadInput(f"{where}: cannot read weights {path} ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise BadInput(f"{where}: {path} holds no state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel
    return state


def load_weights(name: str, module: nn.Module, path: Path) -> None:
    """Load ``path`` into ``module``, strictly: missing, unexpected and mis-shaped keys are
    named (the first few of each)."""
    state = read_state_dict(name, path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    problems = [f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("mis-shaped (file vs model)", shapes)) if keys]
    if problems:
        raise BadInput(f"model {name!r}: weights {path} do not fit the network; "
                       + "; ".join(problems))
    module.load_state_dict(state)
