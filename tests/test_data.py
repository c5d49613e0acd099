import gc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from sklearn.datasets import load_digits

from imbalance_sweep.data import key_safe_class_names, load_splits
from imbalance_sweep.data.sources import (
    load_digits_splits,
    load_imagefolder_splits,
    load_npz_splits,
    long_tail_counts,
)
from imbalance_sweep.errors import ConfigError

# Defaults copied from conf/data/*.yaml. Tests override single keys.
DIGITS = {
    "name": "digits",
    "path": None,
    "image_size": 16,
    "channels": None,
    "class_names": None,
    "imbalance_ratio": 20,
    "val_per_class": 25,
    "test_per_class": 25,
    "split_seed": 0,
}
NPZ = {"name": "npz", "path": None, "image_size": None, "channels": None, "class_names": None}
IMAGEFOLDER = {
    "name": "imagefolder",
    "path": None,
    "image_size": 32,
    "channels": None,
    "class_names": None,
    "val_fraction": 0.15,
    "test_fraction": 0.15,
    "split_seed": 0,
}


def data_cfg(defaults: dict, **overrides) -> DictConfig:
    return OmegaConf.create({**defaults, **overrides})


# --- long_tail_counts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_max", "num_classes", "ratio", "expected"),
    [
        (100, 2, 10, [100, 10]),
        (1000, 3, 100, [1000, 100, 10]),
        (1000, 3, 10, [1000, 316, 100]),  # 1000 / sqrt(10) = 316.2
        (81, 5, 81, [81, 27, 9, 3, 1]),  # ratio 3 between neighbours
        (10, 3, 1000, [10, 1, 1]),  # 0.32 and 0.01 are raised to the floor of 1
        (50, 3, 1, [50, 50, 50]),
        (7, 1, 5, [7]),
    ],
)
def test_long_tail_counts_table(n_max, num_classes, ratio, expected):
    assert long_tail_counts(n_max, num_classes, ratio) == expected


# --- digits -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_native():
    """Digits at the bundled 8x8 size, so every image can be matched back to its dataset row."""
    return load_digits_splits(data_cfg(DIGITS, image_size=8))


def digits_row_index() -> dict[bytes, int]:
    """Map each scaled digits image (as bytes) to its row in scikit-learn's bundle.

    The 1,797 images are pairwise distinct and the 0..16 -> 0..255 scaling is injective, so the
    mapping is one-to-one.
    """
    bunch = load_digits()
    scaled = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    index = {image.tobytes(): row for row, image in enumerate(scaled)}
    assert len(index) == len(scaled)
    return index


def test_digits_val_test_balanced(digits_native):
    assert digits_native.val.class_counts(10) == [25] * 10
    assert digits_native.test.class_counts(10) == [25] * 10


def test_digits_train_long_tail(digits_native):
    # The rarest digit, 8, has 174 images. Holding out 50 leaves 124 for the head class.
    expected = long_tail_counts(124, 10, 20)

    assert digits_native.train.class_counts(10) == expected
    assert expected == [124, 88, 63, 45, 32, 23, 16, 12, 8, 6]


def test_digits_train_ratio_near_config(digits_native):
    counts = digits_native.train.class_counts(10)
    # Rounding the tail down to 6 images (124 / 20 = 6.2) pushes the ratio slightly above 20.
    assert max(counts) / min(counts) == pytest.approx(20, rel=0.05)


def test_digits_splits_disjoint(digits_native):
    row_of = digits_row_index()
    bunch_labels = load_digits().target
    rows = {}
    for name in ("train", "val", "test"):
        split = getattr(digits_native, name)
        rows[name] = [row_of[image[0].numpy().tobytes()] for image in split.images]
        assert len(set(rows[name])) == len(rows[name]), f"{name} repeats an image"
        assert split.labels.tolist() == bunch_labels[rows[name]].tolist(), f"{name} labels differ from the bundle"

    assert not set(rows["train"]) & set(rows["val"])
    assert not set(rows["train"]) & set(rows["test"])
    assert not set(rows["val"]) & set(rows["test"])


def test_digits_class_names_default(digits_native):
    assert digits_native.class_names == [str(c) for c in range(10)]


@pytest.mark.parametrize("size", [8, 12, 16, 28])
def test_digits_image_size(size):
    splits = load_digits_splits(data_cfg(DIGITS, image_size=size))

    for split in (splits.train, splits.val, splits.test):
        assert tuple(split.images.shape[1:]) == (1, size, size)
        assert split.images.dtype == torch.uint8
    assert splits.image_size == size


def test_digits_split_seed_changes_train():
    first = load_digits_splits(data_cfg(DIGITS, image_size=8, split_seed=0))
    second = load_digits_splits(data_cfg(DIGITS, image_size=8, split_seed=1))
    repeat = load_digits_splits(data_cfg(DIGITS, image_size=8, split_seed=0))

    assert torch.equal(first.train.images, repeat.train.images)
    assert not torch.equal(first.train.images, second.train.images)
    assert first.train.class_counts(10) == second.train.class_counts(10)


def test_digits_held_out_too_large():
    with pytest.raises(ConfigError) as err:
        load_digits_splits(data_cfg(DIGITS, val_per_class=100, test_per_class=74))
    assert "174" in str(err.value)


def test_load_splits_caches_by_content():
    cfg = data_cfg(DIGITS, image_size=10)

    first = load_splits(cfg)

    assert load_splits(data_cfg(DIGITS, image_size=10)) is first
    assert load_splits(data_cfg(DIGITS, image_size=11)) is not first


# --- npz --------------------------------------------------------------------------------------------


def write_npz(path: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray], drop: str | None = None) -> Path:
    arrays = {f"{split}_images": images[split] for split in images}
    arrays |= {f"{split}_labels": labels[split] for split in labels}
    arrays.pop(drop, None)
    np.savez(path, **arrays)
    return path


def random_arrays(shape: tuple[int, ...], sizes=(6, 3, 3), num_classes=3, dtype=np.uint8, seed=0):
    """Random images of `shape` per sample and labels 0..num_classes-1 for train, val and test."""
    rng = np.random.default_rng(seed)
    images, labels = {}, {}
    for split, n in zip(("train", "val", "test"), sizes):
        images[split] = rng.integers(0, 256, size=(n, *shape)).astype(dtype)
        labels[split] = np.arange(n) % num_classes
    return images, labels


@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_npz_label_shapes(tmp_path, label_shape):
    images, labels = random_arrays((5, 5))
    stored = {s: y if label_shape == "flat" else y[:, None] for s, y in labels.items()}
    path = write_npz(tmp_path / "data.npz", images, stored)

    splits = load_npz_splits(data_cfg(NPZ, path=str(path)))

    for split in ("train", "val", "test"):
        loaded = getattr(splits, split).labels
        assert loaded.dtype == torch.int64
        assert loaded.tolist() == labels[split].tolist()


@pytest.mark.parametrize(
    ("stored_shape", "expected_shape"),
    [((7, 5), (1, 7, 5)), ((7, 5, 3), (3, 7, 5)), ((7, 5, 1), (1, 7, 5))],
)
def test_npz_image_layout(tmp_path, stored_shape, expected_shape):
    images, labels = random_arrays(stored_shape)
    path = write_npz(tmp_path / "data.npz", images, labels)

    splits = load_npz_splits(data_cfg(NPZ, path=str(path)))

    assert tuple(splits.train.images.shape) == (6, *expected_shape)
    assert splits.train.images.dtype == torch.uint8
    # (N, H, W, C) -> (N, C, H, W) must move values, not just reshape them.
    reference = images["train"].reshape(6, 7, 5, -1).transpose(0, 3, 1, 2)
    assert np.array_equal(splits.train.images.numpy(), reference)


def test_npz_gray_to_three_channels(tmp_path):
    images, labels = random_arrays((6, 6))
    path = write_npz(tmp_path / "data.npz", images, labels)

    splits = load_npz_splits(data_cfg(NPZ, path=str(path), channels=3))

    assert splits.channels == 3
    for c in range(3):
        assert np.array_equal(splits.train.images[:, c].numpy(), images["train"])


# BT.601 luminance 0.299 R + 0.587 G + 0.114 B, rounded, computed by hand.
@pytest.mark.parametrize(
    ("rgb", "gray"),
    [
        ((255, 0, 0), 76),
        ((0, 255, 0), 150),
        ((0, 0, 255), 29),
        ((255, 255, 255), 255),
        ((10, 20, 30), 18),
        ((0, 0, 0), 0),
    ],
)
def test_npz_rgb_to_luminance(tmp_path, rgb, gray):
    pixel = np.array(rgb, dtype=np.uint8)
    image = np.broadcast_to(pixel, (1, 2, 2, 3)).copy()
    path = write_npz(
        tmp_path / "data.npz",
        {"train": image, "val": image, "test": image},
        {"train": np.array([0]), "val": np.array([0]), "test": np.array([0])},
    )

    splits = load_npz_splits(data_cfg(NPZ, path=str(path), channels=1))

    assert splits.channels == 1
    assert splits.train.images.unique().tolist() == [gray]


def test_npz_luminance_matches_pil(tmp_path):
    images, labels = random_arrays((9, 9, 3))
    path = write_npz(tmp_path / "data.npz", images, labels)

    splits = load_npz_splits(data_cfg(NPZ, path=str(path), channels=1))

    reference = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in images["train"]])
    difference = np.abs(splits.train.images[:, 0].numpy().astype(int) - reference.astype(int))
    # PIL rounds in fixed point, the loader in float32, so the two may differ by 1 at x.5.
    assert difference.max() <= 1
    assert (difference == 0).mean() > 0.95


def test_npz_image_size_resizes(tmp_path):
    images, labels = random_arrays((28, 28))
    images["train"][0] = 100
    path = write_npz(tmp_path / "data.npz", images, labels)

    splits = load_npz_splits(data_cfg(NPZ, path=str(path), image_size=14))

    for split in (splits.train, splits.val, splits.test):
        assert tuple(split.images.shape[1:]) == (1, 14, 14)
        assert split.images.dtype == torch.uint8
    assert splits.train.images[0].unique().tolist() == [100]


@pytest.mark.parametrize("missing", ["train_images", "val_labels", "test_images"])
def test_npz_missing_key(tmp_path, missing):
    images, labels = random_arrays((4, 4))
    path = write_npz(tmp_path / "data.npz", images, labels, drop=missing)

    with pytest.raises(ConfigError) as err:
        load_npz_splits(data_cfg(NPZ, path=str(path)))
    assert missing in str(err.value)


@pytest.mark.parametrize("content", ["text", "npy"])
def test_npz_not_an_archive(tmp_path, content):
    path = tmp_path / "data.npz"
    if content == "text":
        path.write_text("train_images,train_labels\n1,2\n")
    else:
        with path.open("wb") as handle:
            np.save(handle, np.zeros((2, 4, 4), dtype=np.uint8))

    with pytest.raises(ConfigError) as err:
        load_npz_splits(data_cfg(NPZ, path=str(path)))
    assert str(path) in str(err.value)


def test_npz_float_images(tmp_path):
    images, labels = random_arrays((4, 4))
    images["val"] = images["val"].astype(np.float32) / 255
    path = write_npz(tmp_path / "data.npz", images, labels)

    with pytest.raises(ConfigError) as err:
        load_npz_splits(data_cfg(NPZ, path=str(path)))
    assert "val_images" in str(err.value)


def test_npz_too_few_class_names(tmp_path):
    images, labels = random_arrays((4, 4), num_classes=3)
    path = write_npz(tmp_path / "data.npz", images, labels)

    with pytest.raises(ConfigError) as err:
        load_npz_splits(data_cfg(NPZ, path=str(path), class_names=["benign", "malignant"]))
    assert "class_names" in str(err.value)


def test_npz_extra_class_names(tmp_path):
    # A label that never occurs in the file still needs a name, so more names than labels is valid.
    images, labels = random_arrays((4, 4), num_classes=2)
    path = write_npz(tmp_path / "data.npz", images, labels)

    splits = load_npz_splits(data_cfg(NPZ, path=str(path), class_names=["a", "b", "c"]))

    assert splits.class_names == ["a", "b", "c"]
    assert splits.train.class_counts(splits.num_classes) == [3, 3, 0]


@pytest.mark.parametrize(
    ("split", "size", "count_0", "count_1"),
    [("train", 546, 147, 399), ("val", 78, 21, 57), ("test", 156, 42, 114)],
)
def test_npz_breastmnist_counts(breastmnist_path, split, size, count_0, count_1):
    splits = load_splits(data_cfg(NPZ, path=str(breastmnist_path)))
    loaded = getattr(splits, split)

    assert len(loaded) == size
    assert loaded.class_counts(2) == [count_0, count_1]
    assert tuple(loaded.images.shape[1:]) == (1, 28, 28)


# --- imagefolder ------------------------------------------------------------------------------------

# Class folders in unsorted order. Every pixel of a class-c image is CLASS_VALUE[c] except pixel (0, 0),
# which stores the image's number, so every image is distinct and shows its class in its pixels.
CLASS_VALUE = {"cat": 200, "ant": 20, "bee": 110}


def write_class_images(folder: Path, value: int, count: int, start: int = 0, size: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(start, start + count):
        pixels = np.full((size, size), value, dtype=np.uint8)
        pixels[0, 0] = number
        Image.fromarray(pixels).save(folder / f"{number:03d}.png")


def image_keys(split) -> set[tuple[int, int]]:
    """(class value, image number) of every image in a split."""
    return {(int(image[0, 1, 1]), int(image[0, 0, 0])) for image in split.images}


def test_imagefolder_class_names_sorted(tmp_path):
    for name, value in CLASS_VALUE.items():
        write_class_images(tmp_path / name, value, 4)

    cfg = data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=8, val_fraction=0.25, test_fraction=0.25)
    splits = load_imagefolder_splits(cfg)

    assert splits.class_names == ["ant", "bee", "cat"]
    for split in (splits.train, splits.val, splits.test):
        values = split.images[:, 0, 1, 1]
        assert values.tolist() == [[20, 110, 200][label] for label in split.labels.tolist()]


def test_imagefolder_carve_stratified(tmp_path):
    counts = {"ant": 40, "bee": 20, "cat": 20}
    for name, count in counts.items():
        write_class_images(tmp_path / name, CLASS_VALUE[name], count)

    cfg = data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=8, val_fraction=0.25, test_fraction=0.25)
    splits = load_imagefolder_splits(cfg)

    # 0.25 of 80 images is 20 for test and 20 for val, each split 2:1:1 like the classes.
    assert splits.test.class_counts(3) == [10, 5, 5]
    assert splits.val.class_counts(3) == [10, 5, 5]
    assert splits.train.class_counts(3) == [20, 10, 10]


def test_imagefolder_carve_disjoint(tmp_path):
    counts = {"ant": 40, "bee": 20, "cat": 20}
    for name, count in counts.items():
        write_class_images(tmp_path / name, CLASS_VALUE[name], count)

    cfg = data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=8, val_fraction=0.25, test_fraction=0.25)
    splits = load_imagefolder_splits(cfg)
    train, val, test = image_keys(splits.train), image_keys(splits.val), image_keys(splits.test)

    assert len(train) == len(splits.train)
    assert not train & val
    assert not train & test
    assert not val & test
    expected = {(CLASS_VALUE[name], number) for name, count in counts.items() for number in range(count)}
    assert train | val | test == expected


def test_imagefolder_split_layout(tmp_path):
    sizes = {"train": 6, "val": 2, "test": 3}
    for split, count in sizes.items():
        for name in ("ant", "bee"):
            write_class_images(tmp_path / split / name, CLASS_VALUE[name], count)

    splits = load_imagefolder_splits(data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=8))

    assert splits.train.class_counts(2) == [6, 6]
    assert splits.val.class_counts(2) == [2, 2]
    assert splits.test.class_counts(2) == [3, 3]
    assert splits.class_names == ["ant", "bee"]


def test_imagefolder_split_layout_carves_val(tmp_path):
    for name in ("ant", "bee"):
        write_class_images(tmp_path / "train" / name, CLASS_VALUE[name], 10)
        write_class_images(tmp_path / "test" / name, CLASS_VALUE[name], 3, start=10)

    cfg = data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=8, val_fraction=0.2)
    splits = load_imagefolder_splits(cfg)

    assert splits.test.class_counts(2) == [3, 3]
    assert splits.val.class_counts(2) == [2, 2]
    assert splits.train.class_counts(2) == [8, 8]
    assert not image_keys(splits.val) & image_keys(splits.train)


def test_imagefolder_ignores_other_files(tmp_path):
    for name in ("ant", "bee"):
        write_class_images(tmp_path / name, CLASS_VALUE[name], 4)
        (tmp_path / name / "notes.txt").write_text("labelled by hand\n")
    (tmp_path / "README.txt").write_text("two classes\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("not a class\n")

    cfg = data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=8, val_fraction=0.25, test_fraction=0.25)
    splits = load_imagefolder_splits(cfg)

    assert splits.class_names == ["ant", "bee"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 8


def test_imagefolder_corrupt_png(tmp_path):
    for name in ("ant", "bee"):
        write_class_images(tmp_path / name, CLASS_VALUE[name], 4)
    (tmp_path / "bee" / "broken.png").write_bytes(np.random.default_rng(0).bytes(300))

    with pytest.raises(ConfigError) as err:
        load_imagefolder_splits(data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=8))
    assert "broken.png" in str(err.value)


def load_truncated_png(root: Path) -> tuple[str, list[warnings.WarningMessage]]:
    """Load a folder whose bee/cut.png is cut in half and return the ConfigError message and ResourceWarnings."""
    for name in ("ant", "bee"):
        write_class_images(root / name, CLASS_VALUE[name], 4)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "bee" / "cut.png")
    full = (root / "bee" / "cut.png").read_bytes()
    (root / "bee" / "cut.png").write_bytes(full[: len(full) // 2])

    # The warning is recorded here, not raised, so that a leaked file handle cannot fail a later test.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(ConfigError) as err:
            load_imagefolder_splits(data_cfg(IMAGEFOLDER, path=str(root), image_size=8))
        message = str(err.value)
        # The error's __context__ traceback keeps the half-read image alive until it is dropped.
        del err
        gc.collect()
    return message, [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_imagefolder_truncated_png(tmp_path):
    message, _ = load_truncated_png(tmp_path)

    assert "cut.png" in message


def test_imagefolder_truncated_png_closed(tmp_path):
    _, resource_warnings = load_truncated_png(tmp_path)

    assert resource_warnings == []


def test_imagefolder_gray_one_channel(tmp_path):
    for name in ("ant", "bee"):
        write_class_images(tmp_path / name, CLASS_VALUE[name], 4)
    Image.fromarray(np.full((8, 8), 50, dtype=np.uint8)).save(tmp_path / "ant" / "gray.jpg")

    cfg = data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=8, val_fraction=0.25, test_fraction=0.25)
    splits = load_imagefolder_splits(cfg)

    assert splits.channels == 1


def test_imagefolder_one_rgb_three_channels(tmp_path):
    for name in ("ant", "bee"):
        write_class_images(tmp_path / name, CLASS_VALUE[name], 4)
    Image.fromarray(np.full((8, 8, 3), (250, 10, 10), dtype=np.uint8)).save(tmp_path / "bee" / "red.JPG")

    cfg = data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=8, val_fraction=0.25, test_fraction=0.25)
    splits = load_imagefolder_splits(cfg)

    assert splits.channels == 3
    assert len(splits.train) + len(splits.val) + len(splits.test) == 9
    # Gray images become RGB with three equal channels.
    gray = splits.train.images[splits.train.images[:, 0, 1, 1] == 20]
    assert torch.equal(gray[:, 0], gray[:, 1])
    assert torch.equal(gray[:, 0], gray[:, 2])


def test_imagefolder_channels_override(tmp_path):
    for name in ("ant", "bee"):
        write_class_images(tmp_path / name, CLASS_VALUE[name], 4)
    Image.fromarray(np.full((8, 8, 3), (250, 10, 10), dtype=np.uint8)).save(tmp_path / "bee" / "red.png")

    cfg = data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=8, channels=1, val_fraction=0.25, test_fraction=0.25)
    splits = load_imagefolder_splits(cfg)

    assert splits.channels == 1
    every = torch.cat([splits.train.images, splits.val.images, splits.test.images])
    # PIL's "L" of (250, 10, 10) is 0.299 * 250 + 0.587 * 10 + 0.114 * 10 = 81.76, rounded to 82.
    assert int((every[:, 0, 1, 1] == 82).sum()) == 1


def test_imagefolder_image_size(tmp_path):
    for name in ("ant", "bee"):
        write_class_images(tmp_path / name, CLASS_VALUE[name], 4, size=20)

    cfg = data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=12, val_fraction=0.25, test_fraction=0.25)
    splits = load_imagefolder_splits(cfg)

    for split in (splits.train, splits.val, splits.test):
        assert tuple(split.images.shape[1:]) == (1, 12, 12)
        assert split.images.dtype == torch.uint8


def test_imagefolder_too_few_to_carve(tmp_path):
    write_class_images(tmp_path / "ant", CLASS_VALUE["ant"], 10)
    write_class_images(tmp_path / "bee", CLASS_VALUE["bee"], 1)

    with pytest.raises(ConfigError) as err:
        load_imagefolder_splits(data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=8))
    assert "'bee'" in str(err.value)


def test_imagefolder_unknown_val_class(tmp_path):
    write_class_images(tmp_path / "train" / "ant", CLASS_VALUE["ant"], 4)
    write_class_images(tmp_path / "train" / "bee", CLASS_VALUE["bee"], 4)
    write_class_images(tmp_path / "val" / "cat", CLASS_VALUE["cat"], 2)

    with pytest.raises(ConfigError) as err:
        load_imagefolder_splits(data_cfg(IMAGEFOLDER, path=str(tmp_path), image_size=8))
    assert "cat" in str(err.value)


def test_imagefolder_missing_directory(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_imagefolder_splits(data_cfg(IMAGEFOLDER, path=str(tmp_path / "absent")))
    assert "absent" in str(err.value)


# --- key_safe_class_names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["a/b"], ["a_b"]),
        (["x", "x"], ["x", "x_1"]),
        (["x", "x", "x"], ["x", "x_1", "x_2"]),
        (["a/b", "a_b"], ["a_b", "a_b_1"]),
        (["", "b"], ["class_0", "b"]),
        (["b", "   "], ["b", "class_1"]),
        (["Ok_name-1.2: x"], ["Ok_name-1.2: x"]),
        (["café", "naïve"], ["caf_", "na_ve"]),
        ([" padded "], ["padded"]),
        (["a" * 150], ["a" * 100]),
        (["a" * 150, "a" * 120], ["a" * 100, "a" * 92 + "_1"]),
        ([0, 1], ["0", "1"]),
    ],
)
def test_key_safe_class_names_table(names, expected):
    assert key_safe_class_names(names) == expected


def test_key_safe_suffix_collision():
    safe = key_safe_class_names(["a", "a_2", "a"])

    assert len(set(safe)) == 3
