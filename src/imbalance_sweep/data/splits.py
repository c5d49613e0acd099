"""Data containers and class-name handling shared by every data source."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# MLflow accepts letters, digits, `_ - . : /` and space in metric keys. A class name also sits between
# slashes in `val/recall/<class>`, so `/` is replaced too.
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-.: ]")
MAX_CLASS_KEY_LENGTH = 100  # leaves room for the `test/precision/` prefix within MLflow's 250 characters


@dataclass
class Split:
    """Images as uint8 (N, C, H, W) and labels as int64 (N,), both on the CPU."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass
class ImageSplits:
    """Train, validation and test splits with the class names as MLflow-safe keys."""

    train: Split
    val: Split
    test: Split
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]


def key_safe_class_names(names: list[str]) -> list[str]:
    """Make class names usable inside MLflow metric keys and keep them distinct.

    Characters MLflow rejects (and `/`) become `_`, and names are cut to 100 characters. A name that
    ends up empty becomes `class_<index>`; a name that collides with an earlier one gets `_<index>`.
    """
    safe: list[str] = []
    for index, name in enumerate(names):
        key = _UNSAFE_KEY_CHARS.sub("_", str(name)).strip()[:MAX_CLASS_KEY_LENGTH].rstrip()
        if not key:
            key = f"class_{index}"
        stem, suffix = key, 0
        while key in safe:  # the suffixed name may itself be taken, e.g. ["a", "a_2", "a"]
            suffix += 1
            key = f"{stem[:MAX_CLASS_KEY_LENGTH - 8]}_{index}" + (f"_{suffix}" if suffix > 1 else "")
        safe.append(key)
    return safe
