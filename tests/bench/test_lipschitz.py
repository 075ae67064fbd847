"""The margin-gradient column (bench.core.lipschitz): checked against closed forms."""

from __future__ import annotations

import torch
from torch import nn

from bench.core.lipschitz import margin_gradient_norms, median_margin_gradient
from bench.core.losses import margin_loss
from bench.core.target import Target


def test_decision_margin_is_true_logit_minus_best_other() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 4.0, -1.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 2, 1])
    assert (-margin_loss(logits, y)).tolist() == [0.5, -5.0, 0.0]


def test_gradient_norms_of_a_linear_classifier_are_its_weight_differences() -> None:
    """z = W((x - mean) / std) + b: the margin's gradient is (W_y - W_j*) / std, j* the best
    other class, so its L1 and L2 norms are known in closed form."""
    torch.manual_seed(0)
    linear = nn.Linear(12, 4)
    target = Target(nn.Sequential(nn.Flatten(), linear), num_classes=4, input_shape=(3, 2, 2),
                    bounds=(0.0, 1.0), mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0])
    x = torch.rand(9, 3, 2, 2)
    y = torch.randint(0, 4, (9,))
    l1, l2 = margin_gradient_norms(target, x, y, batch_size=4) or (None, None)
    assert l1 is not None and l2 is not None
    logits = target.predict_logits(x)
    runner_up = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    w = linear.weight.detach()
    std = torch.tensor([0.5, 0.25, 2.0]).repeat_interleave(4)
    expected = (w[y] - w[runner_up]) / std
    torch.testing.assert_close(l1, expected.abs().sum(1))
    torch.testing.assert_close(l2, expected.norm(dim=1))
    medians = median_margin_gradient(target, x, y)
    assert medians.l1 == float(l1.median()) and medians.l2 == float(l2.median())


def test_a_discriminator_margin_is_plus_or_minus_its_logit() -> None:
    """[0, d]: the margin is d for a real image (class 1) and -d for a fake one; same norm."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    target = Target(net, num_classes=2, input_shape=(1, 4, 4), bounds=(0.0, 1.0),
                    kind="discriminator")
    x = torch.rand(4, 1, 4, 4)
    norms = margin_gradient_norms(target, x, torch.tensor([1, 0, 1, 0]))
    assert norms is not None
    torch.testing.assert_close(norms[0], torch.full((4,), float(net[1].weight.detach().abs().sum())))


class _Rounded(nn.Module):
    """A non-differentiable input step (rounding to 8 bits) before a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x.flatten(1) * 255).round().detach() / 255)


def test_no_input_gradient_gives_null_columns() -> None:
    target = Target(_Rounded(), num_classes=3, input_shape=(1, 2, 2), bounds=(0.0, 1.0))
    medians = median_margin_gradient(target, torch.rand(5, 1, 2, 2), torch.zeros(5).long())
    assert medians.l1 is None and medians.l2 is None


def test_the_target_is_left_as_it_was(lenet: Target) -> None:
    x = torch.rand(4, 1, 28, 28)
    lenet.train()
    before = [(p.requires_grad, None if p.grad is None else p.grad.clone())
              for p in lenet.parameters()]
    median_margin_gradient(lenet, x, torch.arange(4))
    assert lenet.training
    for p, (requires_grad, grad) in zip(lenet.parameters(), before):
        assert p.requires_grad == requires_grad  # no parameter gradient is accumulated
        assert (p.grad is None and grad is None) or torch.equal(p.grad, grad)
    lenet.eval()
