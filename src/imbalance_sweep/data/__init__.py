"""Data sources, splits and the per-process cache of loaded data."""

from __future__ import annotations

import json
import logging

from omegaconf import DictConfig, OmegaConf

from imbalance_sweep.data.sources import (
    load_digits_splits,
    load_imagefolder_splits,
    load_npz_splits,
)
from imbalance_sweep.data.splits import ImageSplits, Split, key_safe_class_names

__all__ = ["ImageSplits", "Split", "key_safe_class_names", "load_splits"]

log = logging.getLogger(__name__)

_LOADERS = {"digits": load_digits_splits, "npz": load_npz_splits, "imagefolder": load_imagefolder_splits}
_CACHE: dict[str, ImageSplits] = {}


def load_splits(cfg: DictConfig) -> ImageSplits:
    """Load the configured data once per process; later calls with the same `data` config reuse it."""
    key = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True)
    if key not in _CACHE:
        splits = _LOADERS[cfg.name](cfg)
        log.info(
            "data %s: %d train / %d val / %d test images, %d classes, %d channel(s), %dx%d px",
            cfg.name, len(splits.train), len(splits.val), len(splits.test), splits.num_classes,
            splits.channels, splits.image_size, splits.image_size,
        )
        _CACHE[key] = splits
    return _CACHE[key]
