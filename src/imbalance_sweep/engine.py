"""The training step and batched prediction: one code path for CPU, CUDA and mixed precision."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import WeightedRandomSampler

from imbalance_sweep.errors import ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """Map `trainer.device` to a torch device: auto picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={name} but this machine has no CUDA device: use trainer.device=auto or cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device={name} but only {torch.cuda.device_count()} CUDA device(s) exist: use cuda:0..")
    return torch.device(name)


class Precision:
    """Mixed-precision settings chosen once per run.

    On CUDA, autocast runs in bfloat16 where the GPU supports it, else float16 with a gradient scaler.
    On the CPU everything stays float32. With the scaler disabled, `scale`, `step` and `update`
    pass straight through, so there is one training step for every case.
    """

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.device_type = device.type
        self.dtype: torch.dtype | None = None
        if enabled and device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def epoch_batches(
    num_samples: int, batch_size: int, generator: torch.Generator, sample_weights: torch.Tensor | None
) -> list[torch.Tensor]:
    """Return one epoch of index batches: a permutation, or weighted draws with replacement."""
    if sample_weights is None:
        order = torch.randperm(num_samples, generator=generator)
    else:
        sampler = WeightedRandomSampler(sample_weights, num_samples, replacement=True, generator=generator)
        order = torch.tensor(list(sampler), dtype=torch.int64)
    batches = list(order.split(batch_size))
    # BatchNorm cannot normalise a batch of one sample in training mode; that sample waits an epoch.
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batches: list[torch.Tensor],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    prepare: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    precision: Precision,
    epoch: int,
) -> float:
    """Run one epoch over `batches` of indices into on-device `images` and `labels`; return the mean loss.

    `prepare` turns a uint8 batch and its labels into model inputs, plus the partner labels and
    mixing weights when Mixup or CutMix mixed the batch.
    """
    model.train()
    total, seen = 0.0, 0
    for index in batches:
        index = index.to(images.device)
        targets = labels[index]
        inputs, targets_b, lam = prepare(images[index], targets)
        with precision.autocast():
            logits = model(inputs)
        loss = loss_fn(logits.float(), targets, targets_b, lam)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at epoch {epoch}: lower optim.lr or check the data")

        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()

        total += loss.item() * len(index)
        seen += len(index)
    return total / max(seen, 1)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    precision: Precision,
    adjust_logits: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 512,
) -> tuple[np.ndarray, float]:
    """Return predicted classes and the mean unweighted cross-entropy over a whole split.

    `adjust_logits` (the loss's `prediction_logits`) maps the model's logits before both.
    """
    model.eval()
    predictions, total = [], 0.0
    for start in range(0, len(labels), batch_size):
        inputs = prepare(images[start : start + batch_size])
        with precision.autocast():
            logits = model(inputs).float()
        if adjust_logits is not None:
            logits = adjust_logits(logits)
        total += F.cross_entropy(logits, labels[start : start + batch_size], reduction="sum").item()
        predictions.append(logits.argmax(dim=1).cpu())
    mean_loss = total / len(labels) if len(labels) else math.nan
    return torch.cat(predictions).numpy() if predictions else np.zeros(0, dtype=np.int64), mean_loss
