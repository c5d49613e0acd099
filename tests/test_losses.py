import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from imbalance_sweep.errors import ConfigError
from imbalance_sweep.losses import FocalLoss, build_loss, class_weights

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [1.0, 1.0, 3.0]])
TARGETS = torch.tensor([0, 2, 1, 0])


@pytest.mark.parametrize(
    ("counts", "scheme", "beta", "expected"),
    [
        # raw 1/n = [1/100, 1/10, 1/1] -> sum 1.11 -> rescaled to sum 3
        ([100, 10, 1], "inverse", 0.0, [3 * 0.01 / 1.11, 3 * 0.1 / 1.11, 3 * 1.0 / 1.11]),
        # raw 1/sqrt(n) = [1/10, 1/2] -> sum 0.6 -> rescaled to sum 2
        ([100, 4], "sqrt_inverse", 0.0, [2 * 0.1 / 0.6, 2 * 0.5 / 0.6]),
        # raw (1 - 0.9) / (1 - 0.9^n): n=1 -> 1, n=2 -> 0.1/0.19
        ([1, 2], "effective_number", 0.9, [2 * 1 / (1 + 0.1 / 0.19), 2 * (0.1 / 0.19) / (1 + 0.1 / 0.19)]),
        ([5, 5, 5], "inverse", 0.0, [1.0, 1.0, 1.0]),
        # a class with no samples gets weight 0
        ([10, 0, 10], "inverse", 0.0, [1.5, 0.0, 1.5]),
    ],
)
def test_class_weights_table(counts, scheme, beta, expected):
    assert class_weights(counts, scheme, beta).tolist() == pytest.approx(expected, rel=1e-6)


def test_class_weights_unknown_scheme():
    with pytest.raises(ConfigError):
        class_weights([1, 2], "square")


def test_focal_gamma_zero_equals_cross_entropy():
    focal = FocalLoss(gamma=0.0)
    assert focal(LOGITS, TARGETS).item() == pytest.approx(F.cross_entropy(LOGITS, TARGETS).item(), rel=1e-6)


def test_focal_gamma_zero_alpha_equals_weighted_ce():
    alpha = torch.tensor([0.2, 1.0, 1.8])
    focal = FocalLoss(gamma=0.0, weight=alpha)
    expected = F.cross_entropy(LOGITS, TARGETS, weight=alpha).item()
    assert focal(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)


def test_focal_gamma_two_hand_computed():
    # One sample, two classes, logits [0, ln 3]: p(class 1) = 3/4.
    logits = torch.tensor([[0.0, math.log(3.0)]])
    target = torch.tensor([1])
    expected = -((1 - 0.75) ** 2) * math.log(0.75)
    assert FocalLoss(gamma=2.0)(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_ce_hand_computed():
    # Logits [[ln 3, 0], [0, 0]]: sample 0 has p = 3/4 for its class, sample 1 has p = 1/2.
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    targets = torch.tensor([0, 1])
    cfg = OmegaConf.create({"name": "weighted_ce", "weights": "inverse", "beta": 0.999})
    loss = build_loss(cfg, class_counts=[30, 10])  # inverse weights [1/30, 1/10] -> [0.5, 1.5]
    expected = (0.5 * -math.log(0.75) + 1.5 * -math.log(0.5)) / (0.5 + 1.5)
    assert loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_ce_matches_torch_weighted_mean():
    cfg = OmegaConf.create({"name": "weighted_ce", "weights": "sqrt_inverse", "beta": 0.999})
    counts = [90, 9, 1]
    loss = build_loss(cfg, counts)
    expected = F.cross_entropy(LOGITS, TARGETS, weight=class_weights(counts, "sqrt_inverse")).item()
    assert loss(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["ce", "weighted_ce", "focal"])
def test_losses_finite_for_extreme_logits(name):
    cfg = OmegaConf.create({"name": name, "weights": "inverse", "beta": 0.999, "gamma": 2.0})
    loss_fn = build_loss(cfg, [50, 5, 1])
    logits = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 0.0], [0.0, -100.0, 100.0]], requires_grad=True)
    loss = loss_fn(logits, torch.tensor([1, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_focal_gamma_zero_gradient_finite_at_certainty():
    logits = torch.tensor([[100.0, -100.0]], requires_grad=True)
    FocalLoss(gamma=0.0)(logits, torch.tensor([0])).backward()
    assert torch.isfinite(logits.grad).all()
