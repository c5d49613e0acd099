"""Resampling of the training split with imbalanced-learn and PyTorch's WeightedRandomSampler.

Only the training split ever passes through here. A ratio is minority count / majority count after
resampling. imbalanced-learn's float `sampling_strategy` works for two classes only, so every ratio
becomes a per-class dict of target counts, which works for any number of classes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from imblearn.over_sampling import SMOTE, RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler
from omegaconf import DictConfig

from imbalance_sweep.data import Split
from imbalance_sweep.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ResampledTrain:
    """The training split after resampling.

    `sample_weights` is set only for `weighted_sampler`: the trainer then draws each epoch's indices
    with replacement using these weights, and `class_counts` holds the expected counts per epoch.
    """

    split: Split
    class_counts: list[int]
    sample_weights: torch.Tensor | None = None


def over_sampling_targets(counts: list[int], ratio: float) -> dict[int, int]:
    """Return the target count of every class that over-sampling to `ratio` must grow.

    A class with n_c samples grows to ceil(ratio * n_max); classes already there are left out.
    """
    goal = math.ceil(round(ratio * max(counts), 9))  # round first: 0.3 * 10 is 3.0000000000000004
    return {c: goal for c, n in enumerate(counts) if 0 < n < goal}


def under_sampling_targets(counts: list[int], ratio: float) -> dict[int, int]:
    """Return the target count of every class that under-sampling to `ratio` must shrink.

    A class with n_c samples shrinks to floor(n_min / ratio), so n_min / new n_c >= ratio.
    """
    present = [n for n in counts if n > 0]
    cap = math.floor(round(min(present) / ratio, 9))
    return {c: cap for c, n in enumerate(counts) if n > cap}


def sampler_class_probabilities(counts: list[int], power: float) -> np.ndarray:
    """Return class sampling probabilities proportional to n_c^power (classes with no samples get 0)."""
    counts_array = np.asarray(counts, dtype=np.float64)
    mass = np.where(counts_array > 0, counts_array ** power, 0.0)
    return mass / mass.sum()


def resample_train(train: Split, cfg: DictConfig, class_names: list[str], seed: int) -> ResampledTrain:
    """Resample the training split as `cfg` (the `resample` group) says."""
    num_classes = len(class_names)
    counts = train.class_counts(num_classes)
    labels = train.labels.numpy()
    name = cfg.name

    if name == "none":
        return ResampledTrain(train, counts)
    if name == "weighted_sampler":
        probabilities = sampler_class_probabilities(counts, cfg.power)
        # Each sample of class c gets p_c / n_c, so the class as a whole is drawn with probability p_c.
        per_class = np.divide(probabilities, counts, out=np.zeros_like(probabilities), where=np.asarray(counts) > 0)
        weights = torch.from_numpy(per_class[labels])
        expected = np.round(probabilities * len(train)).astype(int).tolist()
        return ResampledTrain(train, expected, sample_weights=weights)
    if name == "random_over":
        index = _resample_indices(RandomOverSampler, over_sampling_targets(counts, cfg.ratio), labels, seed)
        return _take(train, index, num_classes)
    if name == "random_under":
        index = _resample_indices(RandomUnderSampler, under_sampling_targets(counts, cfg.ratio), labels, seed)
        return _take(train, index, num_classes)
    if name == "hybrid":
        over = _resample_indices(RandomOverSampler, over_sampling_targets(counts, cfg.over_ratio), labels, seed)
        over_counts = np.bincount(labels[over], minlength=num_classes).tolist()
        under = _resample_indices(RandomUnderSampler, under_sampling_targets(over_counts, cfg.under_ratio), labels[over], seed)
        return _take(train, over[under], num_classes)
    if name == "smote":
        return _smote(train, counts, cfg, class_names, seed)
    raise ConfigError(f"unknown resample.name {name!r}: use none, random_over, random_under, hybrid, smote or weighted_sampler")


def _resample_indices(sampler_class, targets: dict[int, int], labels: np.ndarray, seed: int) -> np.ndarray:
    """Resample sample indices instead of images: cheap, and keeps images bit-identical."""
    if not targets:
        return np.arange(len(labels))
    sampler = sampler_class(sampling_strategy=targets, random_state=seed)
    resampled, _ = sampler.fit_resample(np.arange(len(labels)).reshape(-1, 1), labels)
    return resampled[:, 0]


def _take(train: Split, index: np.ndarray, num_classes: int) -> ResampledTrain:
    index_tensor = torch.from_numpy(np.asarray(index, dtype=np.int64))
    split = Split(train.images[index_tensor], train.labels[index_tensor])
    return ResampledTrain(split, split.class_counts(num_classes))


def _smote(train: Split, counts: list[int], cfg: DictConfig, class_names: list[str], seed: int) -> ResampledTrain:
    targets = over_sampling_targets(counts, cfg.ratio)
    if not targets:
        return ResampledTrain(train, counts)
    smallest = min(counts[c] for c in targets)
    if smallest < 2:
        rare = [c for c in targets if counts[c] == smallest]
        raise ConfigError(
            f"class {class_names[rare[0]]!r} has {smallest} training sample and SMOTE needs at least 2: "
            "use resample=random_over or add samples of that class"
        )
    k_neighbors = int(cfg.k_neighbors)
    if k_neighbors >= smallest:
        log.warning(
            "resample.k_neighbors=%d needs more than %d samples per class; the smallest class has %d, "
            "so SMOTE runs with k_neighbors=%d", k_neighbors, k_neighbors, smallest, smallest - 1,
        )
        k_neighbors = smallest - 1

    shape = train.images.shape[1:]
    flat = train.images.reshape(len(train), -1).numpy().astype(np.float32)
    sampler = SMOTE(sampling_strategy=targets, k_neighbors=k_neighbors, random_state=seed)
    resampled, labels = sampler.fit_resample(flat, train.labels.numpy())
    # Synthetic samples interpolate between uint8 images: round back to the source dtype.
    images = np.clip(np.rint(resampled), 0, 255).astype(np.uint8).reshape(-1, *shape)
    split = Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
    return ResampledTrain(split, split.class_counts(len(class_names)))
