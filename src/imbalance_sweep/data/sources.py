"""Loaders for the three data sources: bundled digits, MedMNIST-style .npz, and image folders.

Each loader returns `ImageSplits` with uint8 images shaped (N, C, H, W). Validation and test splits
are never resampled or augmented later; only the training split is.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from imbalance_sweep.data.splits import ImageSplits, Split, key_safe_class_names
from imbalance_sweep.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp"}
NPZ_SPLITS = ("train", "val", "test")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def long_tail_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Return per-class counts of an exponential long tail: n_c = n_max * ratio^(-c / (C - 1)).

    This is the exponential profile used to build CIFAR-10-LT. Class 0 keeps n_max samples and the
    last class keeps n_max / ratio, rounded down and at least 1.
    """
    if num_classes == 1:
        return [n_max]
    return [max(1, int(n_max * imbalance_ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]


def load_digits_splits(cfg: DictConfig) -> ImageSplits:
    """Split scikit-learn's digits into balanced val/test splits and a long-tailed training split."""
    bunch = load_digits()
    # Pixel values are 0..16 in the bundle; scale them to the 0..255 range of every other source.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    num_classes = int(labels.max()) + 1
    rng = np.random.default_rng(cfg.split_seed)

    held_out = cfg.val_per_class + cfg.test_per_class
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    smallest_pool = min(len(indices) for indices in per_class) - held_out
    if smallest_pool < 1:
        raise ConfigError(
            f"data.val_per_class + data.test_per_class = {held_out} leaves no training image for some digit: "
            "lower them (each digit has at least 174 images)"
        )
    train_counts = long_tail_counts(smallest_pool, num_classes, cfg.imbalance_ratio)

    val_idx, test_idx, train_idx = [], [], []
    for c, indices in enumerate(per_class):
        val_idx.append(indices[: cfg.val_per_class])
        test_idx.append(indices[cfg.val_per_class : held_out])
        train_idx.append(indices[held_out : held_out + train_counts[c]])

    def take(parts: list[np.ndarray]) -> Split:
        index = np.concatenate(parts)
        return Split(resize_and_convert(torch.from_numpy(images[index]), cfg), torch.from_numpy(labels[index]))

    names = cfg.class_names or [str(c) for c in range(num_classes)]
    return ImageSplits(take(train_idx), take(val_idx), take(test_idx), _class_names(names, num_classes))


def load_npz_splits(cfg: DictConfig) -> ImageSplits:
    """Load a MedMNIST-style .npz (`{train,val,test}_{images,labels}`) without unpickling anything."""
    path = Path(cfg.path)
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"data.path {str(path)!r} is not an .npz archive: pass a file saved with numpy.savez or savez_compressed")
    try:
        with np.load(path, allow_pickle=False) as archive:
            expected = [f"{split}_{part}" for split in NPZ_SPLITS for part in ("images", "labels")]
            missing = [key for key in expected if key not in archive.files]
            if missing:
                raise ConfigError(
                    f"{path} lacks the keys {', '.join(missing)}: an npz needs {', '.join(expected)} "
                    "(the MedMNIST layout)"
                )
            arrays = {key: archive[key] for key in expected}
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ConfigError(f"data.path {str(path)!r} is not a readable .npz archive ({error}): pass a file saved with numpy.savez") from None
    except ValueError as error:  # object arrays, which would need pickle
        raise ConfigError(f"{path} cannot be read without pickle ({error}): save plain numeric arrays") from None

    splits = {}
    for split in NPZ_SPLITS:
        images = _npz_images(arrays[f"{split}_images"], f"{split}_images", path)
        labels = _npz_labels(arrays[f"{split}_labels"], f"{split}_labels", path)
        if len(images) != len(labels):
            raise ConfigError(f"{path}: {split}_images has {len(images)} entries but {split}_labels has {len(labels)}")
        splits[split] = (images, labels)

    num_classes = max(int(labels.max()) for _, labels in splits.values() if len(labels)) + 1
    if cfg.class_names is not None:
        if len(cfg.class_names) < num_classes:
            raise ConfigError(
                f"data.class_names has {len(cfg.class_names)} names but {path} has labels up to {num_classes - 1}: "
                "give one name per label"
            )
        num_classes = len(cfg.class_names)
    names = cfg.class_names or [str(c) for c in range(num_classes)]

    converted = {
        split: Split(resize_and_convert(torch.from_numpy(images), cfg), torch.from_numpy(labels))
        for split, (images, labels) in splits.items()
    }
    return ImageSplits(converted["train"], converted["val"], converted["test"], _class_names(names, num_classes))


def _npz_images(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ConfigError(f"{path}: {key} has dtype {array.dtype}, expected uint8: store images as 0..255 uint8")
    if array.ndim == 3:
        return array[:, None, :, :]
    if array.ndim == 4 and array.shape[-1] in (1, 3):
        return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
    raise ConfigError(f"{path}: {key} has shape {array.shape}, expected (N, H, W) or (N, H, W, C) with C 1 or 3")


def _npz_labels(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"{path}: {key} has shape {array.shape} and dtype {array.dtype}, expected integer labels shaped (N,) or (N, 1)")
    if len(array) and array.min() < 0:
        raise ConfigError(f"{path}: {key} contains the negative label {array.min()}: labels must be 0..K-1")
    return array.astype(np.int64)


def load_imagefolder_splits(cfg: DictConfig) -> ImageSplits:
    """Load `DIR/CLASS/*` or `DIR/{train,val,test}/CLASS/*`, carving missing splits out of train."""
    root = Path(cfg.path)
    if not root.is_dir():
        raise ConfigError(f"data.path {str(root)!r} is not a directory: pass DIR holding CLASS/ or train/CLASS/ folders")
    split_layout = (root / "train").is_dir()
    train_root = root / "train" if split_layout else root
    folder_names = sorted(p.name for p in train_root.iterdir() if p.is_dir() and _image_files(p))
    if not folder_names:
        raise ConfigError(f"no class folders with images under {train_root}: expected {train_root}/CLASS/*.png|jpg|jpeg|bmp")
    class_index = {name: i for i, name in enumerate(folder_names)}

    files: dict[str, tuple[list[Path], list[int]]] = {"train": _list_split(train_root, class_index)}
    for split in ("val", "test"):
        if split_layout and (root / split).is_dir():
            files[split] = _list_split(root / split, class_index)

    pil_images = {split: [_open_image(path) for path in paths] for split, (paths, _) in files.items()}
    channels = cfg.channels
    if channels is None:
        all_gray = all(image.mode in _GRAY_MODES for images in pil_images.values() for image in images)
        channels = 1 if all_gray else 3

    arrays = {}
    for split, images in pil_images.items():
        stacked = np.stack([_pil_to_array(image, channels, cfg.image_size) for image in images])
        arrays[split] = (stacked, np.asarray(files[split][1], dtype=np.int64))

    arrays = _carve_missing_splits(arrays, cfg, folder_names)
    names = cfg.class_names or folder_names
    if len(names) != len(folder_names):
        raise ConfigError(f"data.class_names has {len(names)} names but {train_root} has {len(folder_names)} class folders")
    splits = {s: Split(torch.from_numpy(x), torch.from_numpy(y)) for s, (x, y) in arrays.items()}
    return ImageSplits(splits["train"], splits["val"], splits["test"], _class_names(list(names), len(folder_names)))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _list_split(split_root: Path, class_index: dict[str, int]) -> tuple[list[Path], list[int]]:
    paths: list[Path] = []
    labels: list[int] = []
    for folder in sorted(p for p in split_root.iterdir() if p.is_dir()):
        images = _image_files(folder)
        if not images:
            continue
        if folder.name not in class_index:
            raise ConfigError(f"class folder {folder} is not among the training classes {sorted(class_index)}: rename or remove it")
        paths += images
        labels += [class_index[folder.name]] * len(images)
    return paths, labels


def _open_image(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ConfigError(f"cannot read image {path} ({error}): replace or remove the file") from None
    try:
        image.load()
    except (OSError, SyntaxError) as error:
        image.close()  # a truncated file fails here, after open() has opened the file handle
        raise ConfigError(f"cannot read image {path} ({error}): replace or remove the file") from None
    return image


def _pil_to_array(image: Image.Image, channels: int, size: int) -> np.ndarray:
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None, :, :] if channels == 1 else array.transpose(2, 0, 1)


def _carve_missing_splits(arrays: dict, cfg: DictConfig, class_names: list[str]) -> dict:
    """Take missing test, then validation splits out of train, stratified and seeded."""
    train_x, train_y = arrays["train"]
    total = len(train_y)
    for split, fraction in (("test", cfg.test_fraction), ("val", cfg.val_fraction)):
        if split in arrays:
            continue
        count = int(round(fraction * total))
        counts = np.bincount(train_y, minlength=len(class_names))
        if counts.min() < 2 or count < len(class_names):
            smallest = class_names[int(counts.argmin())]
            raise ConfigError(
                f"cannot carve a stratified {split} split: class {smallest!r} has {counts.min()} training images "
                f"and {split} would hold {count} images; add a {split}/ folder or more images per class"
            )
        keep, take = train_test_split(
            np.arange(len(train_y)), test_size=count, stratify=train_y, random_state=cfg.split_seed
        )
        arrays[split] = (train_x[take], train_y[take])
        train_x, train_y = train_x[keep], train_y[keep]
    arrays["train"] = (train_x, train_y)
    return arrays


def resize_and_convert(images: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """Convert uint8 (N, C, H, W) to the configured channel count and square size."""
    channels = cfg.get("channels")
    if channels == 3 and images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    elif channels == 1 and images.shape[1] == 3:
        luminance = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R BT.601, as PIL's "L"
        images = (images.float() * luminance).sum(dim=1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    size = cfg.get("image_size")
    if size and tuple(images.shape[-2:]) != (size, size):
        resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


def _class_names(names: list, num_classes: int) -> list[str]:
    names = [str(name) for name in names]
    if len(names) != num_classes:
        raise ConfigError(f"data.class_names has {len(names)} names for {num_classes} classes: give one name per class")
    safe = key_safe_class_names(names)
    for original, key in zip(names, safe):
        if original != key:
            log.warning("class name %r is logged to MLflow as %r", original, key)
    return safe
