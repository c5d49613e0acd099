"""Losses for long-tailed classification and the class-weight schemes they share.

Every loss computes per-sample values from `log_softmax`, so logits of +-100 stay finite, and
reduces them with one rule. Class weights act per sample: a sample's weight is the weight of its
class, and the batch loss is sum(w_i * l_i) / sum(w_i), as `F.cross_entropy(weight=...)` does.
Weights are rescaled to sum to the number of classes, so uniform weights are all 1. Because of the
weighted mean this rescaling does not change the loss value; it only makes weights readable.

Mixup and CutMix give a sample two targets a and b with mixing weight lam. Its loss is
lam * l(a) + (1 - lam) * l(b), and its weight in the mean is lam * w_a + (1 - lam) * w_b, so a
mixed sample counts as much as its blend of classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from imbalance_sweep.errors import ConfigError

log = logging.getLogger(__name__)


def class_weights(counts: Sequence[int], scheme: str, beta: float = 0.999) -> torch.Tensor:
    """Return per-class weights for `counts`, rescaled to sum to the number of classes.

    inverse: 1 / n_c. sqrt_inverse: 1 / sqrt(n_c). effective_number: (1 - beta) / (1 - beta^n_c), the
    inverse of the effective number of samples of the class-balanced loss. A class with no samples
    gets weight 0, which never applies because no sample of it exists.
    """
    n = torch.as_tensor(list(counts), dtype=torch.float64)
    present = n > 0
    raw = torch.zeros_like(n)
    if scheme == "inverse":
        raw[present] = 1.0 / n[present]
    elif scheme == "sqrt_inverse":
        raw[present] = 1.0 / n[present].sqrt()
    elif scheme == "effective_number":
        raw[present] = (1.0 - beta) / (1.0 - beta ** n[present])
    else:
        raise ConfigError(f"unknown loss.weights {scheme!r}: use inverse, sqrt_inverse or effective_number")
    return (raw * len(n) / raw.sum()).float()


def log_class_counts(counts: Sequence[int]) -> torch.Tensor:
    """Return log n_c. A class absent from training counts as 1 sample, which keeps the log finite."""
    return torch.as_tensor(list(counts), dtype=torch.float32).clamp(min=1).log()


def smoothed_nll(log_probs: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Return per-sample cross-entropy against (1 - smoothing) one-hot + smoothing / C uniform targets."""
    nll = -log_probs.gather(1, targets[:, None])[:, 0]
    if smoothing == 0:
        return nll
    return (1 - smoothing) * nll - smoothing * log_probs.mean(dim=1)


class ClassLoss(nn.Module):
    """Base of every loss: per-sample values from `sample_losses`, reduced with per-sample class weights.

    `prediction_logits` maps model logits to the logits used for prediction and `val/loss` (post-hoc
    logit adjustment, LDAM's scale). `set_epoch` lets a loss change over training (deferred re-weighting).
    """

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("prediction_offset", None)
        self.label_smoothing = label_smoothing

    def sample_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits.float(), dim=1)
        return smoothed_nll(log_probs, targets, self.label_smoothing)

    def set_epoch(self, epoch: int) -> None:
        """Hook called before each training epoch; most losses do not change."""

    def prediction_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.prediction_offset is None else logits + self.prediction_offset

    def _sample_weights(self, targets: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return torch.ones(len(targets), device=targets.device)
        return self.weight[targets]

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        targets_b: torch.Tensor | None = None,
        lam: torch.Tensor | None = None,
    ) -> torch.Tensor:
        losses = self.sample_losses(logits, targets)
        weights = self._sample_weights(targets)
        if targets_b is None:
            return (weights * losses).sum() / weights.sum()
        losses_b = self.sample_losses(logits, targets_b)
        weights_b = self._sample_weights(targets_b)
        numerator = lam * weights * losses + (1 - lam) * weights_b * losses_b
        return numerator.sum() / (lam * weights + (1 - lam) * weights_b).sum()


class CrossEntropy(ClassLoss):
    """Cross-entropy with optional class weights and label smoothing (ce, weighted_ce, class_balanced).

    NOTE: with both class weights and label smoothing, the weight of the sample's own class scales
    its whole smoothed loss. `F.cross_entropy` instead weights each smoothing term by its class.
    """


class FocalLoss(ClassLoss):
    """Focal loss: per sample -(1 - p_y)^gamma log p_y, reduced with the shared weighted mean.

    With gamma 0 it is cross-entropy, and with class weights it is weighted cross-entropy.
    """

    def __init__(self, gamma: float, weight: torch.Tensor | None = None) -> None:
        super().__init__(weight)
        self.gamma = gamma

    def sample_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None])[:, 0]
        losses = -log_p
        if self.gamma > 0:  # skipped at 0: the gradient of x^0 at x = 0 is NaN in torch
            losses = losses * (1 - log_p.exp()).clamp(min=0) ** self.gamma
        return losses


class LDAMLoss(ClassLoss):
    """Label-distribution-aware margin loss with optional deferred re-weighting (LDAM-DRW).

    The logit of the true class is lowered by a margin m_c proportional to n_c^(-1/4), largest for
    the rarest class (`max_margin`), and all logits are multiplied by `scale`. The scale assumes
    logits in [-1, 1], so LDAM trains a cosine classifier head (`loss.normalize_head`).
    From `drw_start_epoch` on, class-balanced weights (effective number, `drw_beta`) switch on.
    """

    def __init__(
        self,
        counts: Sequence[int],
        max_margin: float,
        scale: float,
        drw_start_epoch: int | None,
        drw_beta: float,
        label_smoothing: float,
    ) -> None:
        super().__init__(None, label_smoothing)
        quarter_root = torch.as_tensor(list(counts), dtype=torch.float32).clamp(min=1) ** 0.25
        margins = 1.0 / quarter_root
        self.register_buffer("margins", margins * (max_margin / margins.max()))
        self.register_buffer("drw_weight", class_weights(counts, "effective_number", drw_beta))
        self.scale = scale
        self.drw_start_epoch = drw_start_epoch

    def prediction_logits(self, logits: torch.Tensor) -> torch.Tensor:
        # Without the scale, cosine logits give a near-uniform softmax and a meaningless val/loss.
        return self.scale * logits

    def set_epoch(self, epoch: int) -> None:
        deferred = self.drw_start_epoch is not None and epoch >= self.drw_start_epoch
        self.weight = self.drw_weight if deferred else None

    def sample_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        margin = torch.zeros_like(logits).scatter_(1, targets[:, None], self.margins[targets][:, None])
        log_probs = F.log_softmax(self.scale * (logits - margin), dim=1)
        return smoothed_nll(log_probs, targets, self.label_smoothing)


class LogitAdjustedLoss(ClassLoss):
    """Cross-entropy on logits + tau * log(prior_c) during training; plain logits at prediction.

    Balanced Softmax is the case tau = 1 (log n_c and log prior_c differ by a constant, which softmax
    ignores). With `posthoc`, training is plain cross-entropy and tau * log(prior_c) is subtracted
    from the logits at prediction time only.
    """

    def __init__(self, counts: Sequence[int], tau: float, posthoc: bool, label_smoothing: float) -> None:
        super().__init__(None, label_smoothing)
        log_counts = log_class_counts(counts)
        log_prior = log_counts - log_counts.exp().sum().log()
        self.register_buffer("train_offset", None if posthoc else tau * log_prior)
        if posthoc:
            self.prediction_offset = -tau * log_prior

    def sample_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.train_offset is not None:
            logits = logits + self.train_offset
        return smoothed_nll(F.log_softmax(logits, dim=1), targets, self.label_smoothing)


def build_loss(cfg: DictConfig, class_counts: Sequence[int]) -> ClassLoss:
    """Build the training loss from the `loss` group and the class counts the loss will see."""
    smoothing = float(cfg.get("label_smoothing", 0.0))
    name = cfg.name
    if name == "ce":
        return CrossEntropy(None, smoothing)
    if name == "weighted_ce":
        if len(set(class_counts)) == 1:
            log.info("loss=weighted_ce: the training classes are balanced (after resampling), so every class weight is 1")
        return CrossEntropy(class_weights(class_counts, cfg.weights, cfg.beta), smoothing)
    if name == "focal":
        weight = None if cfg.weights == "none" else class_weights(class_counts, cfg.weights, cfg.beta)
        return FocalLoss(cfg.gamma, weight)
    if name == "class_balanced":
        weight = class_weights(class_counts, "effective_number", cfg.beta)
        if cfg.base == "focal":
            if smoothing > 0:
                log.warning("loss.label_smoothing=%s is ignored with loss.base=focal: it applies to cross-entropy only", smoothing)
            return FocalLoss(cfg.gamma, weight)
        return CrossEntropy(weight, smoothing)
    if name == "ldam":
        return LDAMLoss(class_counts, cfg.max_margin, cfg.scale, cfg.drw_start_epoch, cfg.drw_beta, smoothing)
    if name == "balanced_softmax":
        return LogitAdjustedLoss(class_counts, 1.0, False, smoothing)
    if name == "logit_adjusted":
        return LogitAdjustedLoss(class_counts, cfg.tau, cfg.posthoc, smoothing)
    raise ConfigError(
        f"unknown loss.name {name!r}: use ce, weighted_ce, focal, class_balanced, ldam, balanced_softmax or logit_adjusted"
    )
