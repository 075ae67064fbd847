"""Sample quality of a GAN with a zoo classifier's features, through torchmetrics.

No Inception weights can be downloaded here, so the Fréchet distance (Heusel et al., "GANs
Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017) and
the Inception-style score (Salimans et al., "Improved Techniques for Training GANs", NeurIPS
2016) are computed by torchmetrics' ``FrechetInceptionDistance`` and ``InceptionScore`` with a
custom feature extractor: the penultimate features (the input of the last linear layer) and the
logits of the classifier advbench trained on the same data. Name them for what they are, e.g.
"FID with LeNet features": the numbers are comparable between GANs judged by the same
classifier, not with published Inception FIDs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.core.errors import BadInput
from bench.core.target import Target


class ClassifierFeatures(nn.Module):
    """A classifier target's penultimate features (``logits=False``: the input of its last
    ``nn.Linear``) or its logits, for images in [0, 1]; no gradients, eval mode."""

    def __init__(self, classifier: Target, logits: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        self.logits = logits
        linears = [m for m in classifier.model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise BadInput(f"classifier {classifier.name!r} has no nn.Linear layer whose input "
                           f"could serve as its features")
        self.last = linears[-1]
        self.num_features = classifier.num_classes if logits else self.last.in_features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of ``images`` in [0, 1] (or bytes in 0..255, as ``InceptionScore`` passes)."""
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        captured: list[torch.Tensor] = []
        hook = self.last.register_forward_hook(
            lambda _m, inputs, _out: captured.append(inputs[0].flatten(1)))
        try:
            logits = self.classifier.predict_logits(images)
        finally:
            hook.remove()
        return logits if self.logits else torch.cat(captured)


def sample_quality(real: torch.Tensor, fake: torch.Tensor, classifier: Target, *, seed: int,
                   batch_size: int = 500) -> dict[str, Any]:
    """FID (real vs fake) and the Inception-style score of ``fake`` with ``classifier``'s
    features; images in [0, 1]. ``seed`` fixes the score's random split into 10 groups."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore

    if len(real) < 2 or len(fake) < 2:
        raise BadInput(f"sample quality needs at least 2 real and 2 generated images, got "
                       f"{len(real)} and {len(fake)}")
    fid = FrechetInceptionDistance(feature=ClassifierFeatures(classifier), normalize=True)
    score = InceptionScore(feature=ClassifierFeatures(classifier, logits=True), normalize=True,
                           splits=10)
    fid, score = fid.to(real.device), score.to(real.device)
    for chunk in real.split(batch_size):
        fid.update(chunk, real=True)
    for chunk in fake.split(batch_size):
        fid.update(chunk, real=False)
        score.update(chunk)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        is_mean, is_std = score.compute()
    return {"features": classifier.name, "n_real": len(real), "n_fake": len(fake),
            "fid": float(fid.compute()), "inception_score": float(is_mean),
            "inception_score_std": float(is_std)}


__all__ = ["ClassifierFeatures", "sample_quality"]
