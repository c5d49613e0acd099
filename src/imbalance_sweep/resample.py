"""Resampling of the training split with imbalanced-learn and PyTorch's WeightedRandomSampler.

Only the training split ever passes through here. A ratio is minority count / majority count after
resampling. imbalanced-learn's float `sampling_strategy` works for two classes only, so every ratio
becomes a per-class dict of target counts, which works for any number of classes.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from imblearn.combine import SMOTEENN, SMOTETomek
from imblearn.over_sampling import ADASYN, SMOTE, BorderlineSMOTE, RandomOverSampler
from imblearn.under_sampling import EditedNearestNeighbours, NearMiss, RandomUnderSampler, TomekLinks
from omegaconf import DictConfig

from imbalance_sweep.data import Split
from imbalance_sweep.config import RESAMPLERS
from imbalance_sweep.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ResampledTrain:
    """The training split after resampling.

    `sample_weights(epoch)` is set for the sampler methods only (`weighted_sampler`,
    `progressive_sampler`). The trainer then draws each epoch's indices with replacement using those
    per-sample weights, and `class_counts` contains the expected counts per epoch, averaged over epochs.
    """

    split: Split
    class_counts: list[int]
    sample_weights: Callable[[int], torch.Tensor] | None = None


OVER_SAMPLERS = ("random_over", "smote", "borderline_smote", "adasyn", "smote_enn", "smote_tomek")
UNDER_SAMPLERS = ("random_under", "near_miss")


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


def progressive_class_probabilities(counts: list[int], epoch: int, max_epochs: int) -> np.ndarray:
    """Return class probabilities moving linearly from the data's frequencies (first epoch) to balanced (last)."""
    progress = epoch / max(max_epochs - 1, 1)
    return (1 - progress) * sampler_class_probabilities(counts, 1.0) + progress * sampler_class_probabilities(counts, 0.0)


def check_ratio_reachable(counts: list[int], ratio: float, method: str, key: str = "resample.ratio") -> None:
    """Raise when the training split's smallest / largest ratio already exceeds `ratio`.

    An over-sampler could then only reach `ratio` by removing samples, an under-sampler only by adding.
    """
    present = [n for n in counts if n > 0]
    current = min(present) / max(present)
    if ratio < current - 1e-9:
        action = "removing" if method in OVER_SAMPLERS else "adding"
        raise ConfigError(
            f"{key}={ratio} is below the training split's current ratio {current:.3f} (smallest / largest class): "
            f"resample={method} cannot reach it without {action} samples; use a ratio >= {current:.3f} or resample=none"
        )


def resample_train(train: Split, cfg: DictConfig, class_names: list[str], seed: int, max_epochs: int = 1) -> ResampledTrain:
    """Resample the training split with the method and settings of `cfg` (the `resample` group)."""
    num_classes = len(class_names)
    counts = train.class_counts(num_classes)
    labels = train.labels.numpy()
    name = cfg.name

    if name == "none":
        return ResampledTrain(train, counts)
    if name in ("weighted_sampler", "progressive_sampler"):
        return _sampler(train, counts, cfg, max_epochs)
    if name == "tomek_links":
        strategy = "all" if cfg.remove_from == "all" else "auto"
        return _subset_by_sampler(train, TomekLinks(sampling_strategy=strategy), name, num_classes)

    ratio_key = "resample.over_ratio" if name == "hybrid" else "resample.ratio"
    ratio = cfg.over_ratio if name == "hybrid" else cfg.ratio
    check_ratio_reachable(counts, ratio, name if name != "hybrid" else "random_over", ratio_key)

    if name == "random_over":
        index = _resample_indices(RandomOverSampler, over_sampling_targets(counts, ratio), labels, seed)
        return _take(train, index, num_classes)
    if name == "random_under":
        index = _resample_indices(RandomUnderSampler, under_sampling_targets(counts, ratio), labels, seed)
        return _take(train, index, num_classes)
    if name == "hybrid":
        over = _resample_indices(RandomOverSampler, over_sampling_targets(counts, ratio), labels, seed)
        over_counts = np.bincount(labels[over], minlength=num_classes).tolist()
        check_ratio_reachable(over_counts, cfg.under_ratio, "random_under", "resample.under_ratio")
        under = _resample_indices(RandomUnderSampler, under_sampling_targets(over_counts, cfg.under_ratio), labels[over], seed)
        return _take(train, over[under], num_classes)
    if name == "near_miss":
        targets = under_sampling_targets(counts, ratio)
        if not targets:
            return ResampledTrain(train, counts)
        sampler = NearMiss(sampling_strategy=targets, version=int(cfg.version), n_neighbors=int(cfg.n_neighbors))
        return _subset_by_sampler(train, sampler, name, num_classes)

    targets = over_sampling_targets(counts, ratio)
    if not targets:
        return ResampledTrain(train, counts)
    k = _neighbours_for_smallest(counts, targets, int(cfg.k_neighbors), name, class_names)
    if name == "smote":
        sampler = SMOTE(sampling_strategy=targets, k_neighbors=k, random_state=seed)
    elif name == "borderline_smote":
        sampler = BorderlineSMOTE(
            sampling_strategy=targets, k_neighbors=k, m_neighbors=int(cfg.m_neighbors), kind=str(cfg.kind), random_state=seed
        )
    elif name == "adasyn":
        sampler = ADASYN(sampling_strategy=targets, n_neighbors=k, random_state=seed)
    elif name == "smote_enn":
        smote = SMOTE(sampling_strategy=targets, k_neighbors=k, random_state=seed)
        sampler = SMOTEENN(smote=smote, enn=EditedNearestNeighbours(n_neighbors=int(cfg.enn_neighbors), sampling_strategy="all"), random_state=seed)
    elif name == "smote_tomek":
        sampler = SMOTETomek(smote=SMOTE(sampling_strategy=targets, k_neighbors=k, random_state=seed), random_state=seed)
    else:
        raise ConfigError(f"unknown resample.name {name!r}: use one of {', '.join(RESAMPLERS)}")
    return _synthesise(train, sampler, name, num_classes)


def _sampler(train: Split, counts: list[int], cfg: DictConfig, max_epochs: int) -> ResampledTrain:
    labels = train.labels.numpy()
    present = np.asarray(counts) > 0

    def weights_from(probabilities: np.ndarray) -> torch.Tensor:
        # Each sample of class c gets p_c / n_c, so the class as a whole is drawn with probability p_c.
        per_class = np.divide(probabilities, counts, out=np.zeros_like(probabilities), where=present)
        return torch.from_numpy(per_class[labels])

    if cfg.name == "weighted_sampler":
        probabilities = sampler_class_probabilities(counts, cfg.power)
        weights = weights_from(probabilities)
        expected = probabilities * len(train)
        return ResampledTrain(train, np.round(expected).astype(int).tolist(), sample_weights=lambda epoch: weights)

    def progressive(epoch: int) -> torch.Tensor:
        return weights_from(progressive_class_probabilities(counts, epoch, max_epochs))

    average = np.mean([progressive_class_probabilities(counts, e, max_epochs) for e in range(max_epochs)], axis=0)
    return ResampledTrain(train, np.round(average * len(train)).astype(int).tolist(), sample_weights=progressive)


def _neighbours_for_smallest(counts: list[int], targets: dict[int, int], k: int, name: str, class_names: list[str]) -> int:
    """Lower k (with a warning) so every class that gains samples has more than k of its own."""
    smallest = min(counts[c] for c in targets)
    if smallest < 2:
        rare = [c for c in targets if counts[c] == smallest]
        raise ConfigError(
            f"class {class_names[rare[0]]!r} has {smallest} training sample and resample={name} needs at least 2: "
            "use resample=random_over or add samples of that class"
        )
    if k >= smallest:
        log.warning(
            "resample.k_neighbors=%d needs more than %d samples per class; the smallest class has %d, "
            "so %s runs with k_neighbors=%d", k, k, smallest, name, smallest - 1,
        )
        k = smallest - 1
    return k
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


def _flat_features(train: Split) -> np.ndarray:
    return train.images.reshape(len(train), -1).numpy().astype(np.float32)


def _fit_resample(sampler, features: np.ndarray, labels: np.ndarray, name: str):
    """Run `fit_resample`, turning its errors into `ConfigError` and its warnings into log lines."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            result = sampler.fit_resample(features, labels)
    except (ValueError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0]
        raise ConfigError(f"resample={name} failed on this training split ({message}): try another resample method") from None
    for warning in caught:
        log.warning("resample=%s: %s", name, warning.message)
    return result


def _synthesise(train: Split, sampler, name: str, num_classes: int) -> ResampledTrain:
    """Run an imbalanced-learn sampler that creates samples on flattened images; keep shape and dtype."""
    shape = train.images.shape[1:]
    resampled, labels = _fit_resample(sampler, _flat_features(train), train.labels.numpy(), name)
    # Synthetic samples interpolate between uint8 images: round back to the source dtype.
    images = np.clip(np.rint(resampled), 0, 255).astype(np.uint8).reshape(-1, *shape)
    split = Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
    return ResampledTrain(split, split.class_counts(num_classes))


def _subset_by_sampler(train: Split, sampler, name: str, num_classes: int) -> ResampledTrain:
    """Run an imbalanced-learn under-sampler and keep the chosen original images bit-identical."""
    _fit_resample(sampler, _flat_features(train), train.labels.numpy(), name)
    return _take(train, np.sort(sampler.sample_indices_), num_classes)
