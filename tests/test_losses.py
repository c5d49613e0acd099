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


def loss_cfg(name: str, **values) -> "OmegaConf":
    defaults = {
        "ce": {},
        "weighted_ce": {"weights": "inverse", "beta": 0.999},
        "focal": {"gamma": 2.0, "weights": "none", "beta": 0.999},
        "class_balanced": {"base": "ce", "beta": 0.999, "gamma": 2.0},
        "ldam": {"max_margin": 0.5, "scale": 30.0, "normalize_head": True, "drw_start_epoch": None, "drw_beta": 0.9999},
        "balanced_softmax": {},
        "logit_adjusted": {"tau": 1.0, "posthoc": False},
    }[name]
    return OmegaConf.create({"name": name, "label_smoothing": 0.0, **defaults, **values})


ALL_LOSSES = [
    loss_cfg("ce"),
    loss_cfg("ce", label_smoothing=0.1),
    loss_cfg("weighted_ce", weights="effective_number"),
    loss_cfg("focal", weights="inverse"),
    loss_cfg("class_balanced"),
    loss_cfg("class_balanced", base="focal"),
    loss_cfg("ldam", drw_start_epoch=0),
    loss_cfg("balanced_softmax", label_smoothing=0.1),
    loss_cfg("logit_adjusted", tau=2.0),
    loss_cfg("logit_adjusted", posthoc=True),
]


@pytest.mark.parametrize("cfg", ALL_LOSSES, ids=lambda c: f"{c.name}-{c.get('base', '')}{c.label_smoothing}")
def test_every_loss_finite_at_extreme_logits(cfg):
    loss_fn = build_loss(cfg, [500, 50, 5])
    loss_fn.set_epoch(0)
    logits = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 0.0], [0.0, -100.0, 100.0], [100.0, 100.0, -100.0]], requires_grad=True)
    loss = loss_fn(logits, torch.tensor([1, 1, 2, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_class_balanced_weights_hand_computed():
    # beta 0.5: effective-number weights (1 - 0.5) / (1 - 0.5^n) are 1 (n=1), 2/3 (n=2), 4/7 (n=3).
    raw = [1.0, 2 / 3, 4 / 7]
    expected = [3 * w / sum(raw) for w in raw]
    assert class_weights([1, 2, 3], "effective_number", beta=0.5).tolist() == pytest.approx(expected, rel=1e-6)
    loss = build_loss(loss_cfg("class_balanced", beta=0.5), [1, 2, 3])
    assert loss.weight.tolist() == pytest.approx(expected, rel=1e-6)


def test_class_balanced_beta_zero_uniform():
    assert class_weights([1000, 10, 1], "effective_number", beta=0.0).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_label_smoothing_matches_torch():
    loss = build_loss(loss_cfg("ce", label_smoothing=0.2), [5, 5, 5])
    expected = F.cross_entropy(LOGITS, TARGETS, label_smoothing=0.2).item()
    assert loss(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)


def test_ldam_margins_and_loss_hand_computed():
    # Counts 1, 16, 81: n^(-1/4) = 1, 1/2, 1/3, rescaled so the largest margin is 0.5.
    loss = build_loss(loss_cfg("ldam", max_margin=0.5, scale=2.0), [1, 16, 81])
    assert loss.margins.tolist() == pytest.approx([0.5, 0.25, 1 / 6], rel=1e-6)

    # Sample of class 1 with logits (0.2, 0.4, -0.1): its own logit drops by 0.25 to 0.15, then x2.
    logits = torch.tensor([[0.2, 0.4, -0.1]])
    scaled = [0.4, 0.3, -0.2]
    expected = -math.log(math.exp(scaled[1]) / sum(math.exp(v) for v in scaled))
    assert loss(logits, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)


def test_ldam_drw_switches_weights_on():
    counts = [100, 10, 1]
    loss = build_loss(loss_cfg("ldam", drw_start_epoch=3, drw_beta=0.9999), counts)
    logits, targets = LOGITS * 0.1, torch.tensor([0, 2, 1, 0])
    loss.set_epoch(2)
    before = loss(logits, targets).item()
    assert loss.weight is None
    loss.set_epoch(3)
    after = loss(logits, targets).item()
    assert loss.weight.tolist() == pytest.approx(class_weights(counts, "effective_number", 0.9999).tolist())
    assert after != pytest.approx(before)


def test_balanced_softmax_equals_logit_adjustment_tau_one():
    counts = [300, 30, 3]
    balanced = build_loss(loss_cfg("balanced_softmax"), counts)
    adjusted = build_loss(loss_cfg("logit_adjusted", tau=1.0), counts)
    assert balanced(LOGITS, TARGETS).item() == pytest.approx(adjusted(LOGITS, TARGETS).item(), rel=1e-6)
    # Both equal cross-entropy on logits + log n_c.
    shifted = LOGITS + torch.tensor(counts, dtype=torch.float32).log()
    assert balanced(LOGITS, TARGETS).item() == pytest.approx(F.cross_entropy(shifted, TARGETS).item(), rel=1e-6)


def test_posthoc_adjustment_trains_plain_predicts_adjusted():
    counts = [300, 30, 3]
    posthoc = build_loss(loss_cfg("logit_adjusted", tau=1.0, posthoc=True), counts)
    assert posthoc(LOGITS, TARGETS).item() == pytest.approx(F.cross_entropy(LOGITS, TARGETS).item(), rel=1e-6)
    prior = torch.tensor(counts, dtype=torch.float32) / sum(counts)
    assert torch.allclose(posthoc.prediction_logits(LOGITS), LOGITS - prior.log())
    # Logits slightly favouring the common class flip to the rare class after adjustment.
    close_call = torch.tensor([[1.0, 0.0, 0.5]])
    assert posthoc.prediction_logits(close_call).argmax().item() == 2
    assert close_call.argmax().item() == 0


def test_mixed_targets_weighted_mean_hand_computed():
    # Sample 0 is 0.25 class 0 + 0.75 class 1; sample 1 is unmixed class 1. Weights [1, 3].
    loss = build_loss(loss_cfg("weighted_ce"), [30, 10])  # inverse weights -> [0.5, 1.5]
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    targets, partners, lam = torch.tensor([0, 1]), torch.tensor([1, 1]), torch.tensor([0.25, 1.0])
    l00, l01, l11 = -math.log(0.75), -math.log(0.25), -math.log(0.5)
    numerator = 0.25 * 0.5 * l00 + 0.75 * 1.5 * l01 + 1.0 * 1.5 * l11
    denominator = 0.25 * 0.5 + 0.75 * 1.5 + 1.0 * 1.5
    assert loss(logits, targets, partners, lam).item() == pytest.approx(numerator / denominator, rel=1e-6)


def test_unmixed_batch_equals_plain_loss():
    loss = build_loss(loss_cfg("focal", weights="sqrt_inverse"), [50, 5, 1])
    plain = loss(LOGITS, TARGETS).item()
    assert loss(LOGITS, TARGETS, TARGETS.flip(0), torch.ones(4)).item() == pytest.approx(plain, rel=1e-6)
