"""Cost-sensitive losses and the class-weight schemes they share.

Class weights act per sample: a sample's weight is the weight of its class, and a weighted mean
divides by the sum of the sample weights, as `F.cross_entropy(weight=...)` does. Weights are
rescaled to sum to the number of classes, so that uniform weights are all 1; because of the
weighted mean this rescaling does not change the loss value, only makes weights readable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from imbalance_sweep.errors import ConfigError


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


class FocalLoss(nn.Module):
    """Focal loss: the mean of -alpha_y (1 - p_y)^gamma log p_y over the batch.

    With `alpha`, the mean divides by the sum of alpha_y over the batch, as weighted cross-entropy
    does, so gamma 0 gives exactly `F.cross_entropy(weight=alpha)`.
    """

    def __init__(self, gamma: float, alpha: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("alpha", alpha)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None])[:, 0]
        losses = -log_p
        if self.gamma > 0:  # skipped at 0: the gradient of x^0 at x = 0 is NaN in torch
            losses = losses * (1 - log_p.exp()).clamp(min=0) ** self.gamma
        if self.alpha is None:
            return losses.mean()
        sample_weights = self.alpha[targets]
        return (sample_weights * losses).sum() / sample_weights.sum()


class WeightedCrossEntropy(nn.Module):
    """`F.cross_entropy` with optional class weights kept as a buffer (moves with `.to(device)`)."""

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, weight=self.weight)


def build_loss(cfg: DictConfig, class_counts: Sequence[int]) -> nn.Module:
    """Build the training loss from the `loss` group and the class counts the loss will see."""
    if cfg.name == "ce":
        return WeightedCrossEntropy()
    if cfg.name == "weighted_ce":
        return WeightedCrossEntropy(class_weights(class_counts, cfg.weights, cfg.beta))
    if cfg.name == "focal":
        alpha = None if cfg.weights == "none" else class_weights(class_counts, cfg.weights, cfg.beta)
        return FocalLoss(cfg.gamma, alpha)
    raise ConfigError(f"unknown loss.name {cfg.name!r}: use ce, weighted_ce or focal")
