import collections
import math
import logging

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from imbalance_sweep.data import Split
from imbalance_sweep.engine import epoch_batches
from imbalance_sweep.errors import ConfigError
from imbalance_sweep.resample import (
    over_sampling_targets,
    resample_train,
    sampler_class_probabilities,
    under_sampling_targets,
)


def make_split(counts: list[int], size: int = 4, seed: int = 0) -> Split:
    """Random uint8 images with `counts[c]` samples of class c; class c's pixels centre on 60 * c."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    images = rng.integers(0, 40, size=(len(labels), 1, size, size)) + 60 * labels[:, None, None, None]
    return Split(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels.astype(np.int64)))


def names(n: int) -> list[str]:
    return [f"c{i}" for i in range(n)]


@pytest.mark.parametrize(
    ("counts", "ratio", "expected"),
    [
        ([100, 10], 1.0, {1: 100}),
        ([100, 10], 0.5, {1: 50}),
        ([100, 60], 0.5, {}),  # already above the ratio: nothing to add
        ([100, 50, 10], 0.3, {2: 30}),  # 0.3 * 100 is 30.000000000000004 in floats, still 30
        ([7, 3, 1], 1.0, {1: 7, 2: 7}),
        ([10, 3], 0.25, {}),  # ceil(2.5) = 3 already reached
        ([10, 2], 0.25, {1: 3}),
    ],
)
def test_over_sampling_targets_table(counts, ratio, expected):
    assert over_sampling_targets(counts, ratio) == expected


@pytest.mark.parametrize(
    ("counts", "ratio", "expected"),
    [
        ([100, 10], 1.0, {0: 10}),
        ([100, 10], 0.5, {0: 20}),
        ([100, 10], 0.1, {}),  # 10 / 100 already meets 0.1
        ([100, 50, 10], 0.25, {0: 40, 1: 40}),
        ([9, 3, 3], 0.5, {0: 6}),
        ([10, 3], 0.7, {0: 4}),  # floor(3 / 0.7) = floor(4.28) = 4
    ],
)
def test_under_sampling_targets_table(counts, ratio, expected):
    assert under_sampling_targets(counts, ratio) == expected


@pytest.mark.parametrize(
    ("cfg", "counts", "expected"),
    [
        ({"name": "none"}, [40, 8], [40, 8]),
        ({"name": "random_over", "ratio": 1.0}, [40, 8], [40, 40]),
        ({"name": "random_over", "ratio": 0.5}, [40, 8], [40, 20]),
        ({"name": "random_over", "ratio": 0.5}, [40, 12, 6, 30], [40, 20, 20, 30]),
        ({"name": "random_under", "ratio": 1.0}, [40, 8], [8, 8]),
        ({"name": "random_under", "ratio": 0.5}, [40, 12, 6, 30], [12, 12, 6, 12]),
        ({"name": "hybrid", "over_ratio": 0.5, "under_ratio": 1.0}, [40, 8], [20, 20]),
        ({"name": "hybrid", "over_ratio": 0.25, "under_ratio": 0.5}, [40, 12, 6, 30], [20, 12, 10, 20]),
        ({"name": "smote", "ratio": 1.0, "k_neighbors": 3}, [40, 8], [40, 40]),
        ({"name": "smote", "ratio": 0.5, "k_neighbors": 3}, [40, 12, 6, 30], [40, 20, 20, 30]),
    ],
)
def test_resampler_exact_class_counts(cfg, counts, expected):
    split = make_split(counts)
    result = resample_train(split, OmegaConf.create(cfg), names(len(counts)), seed=0)
    assert result.class_counts == expected
    assert result.split.class_counts(len(counts)) == expected
    assert result.sample_weights is None


def test_random_over_keeps_originals_and_duplicates():
    split = make_split([20, 5])
    result = resample_train(split, OmegaConf.create({"name": "random_over", "ratio": 1.0}), names(2), seed=0)
    originals = {tuple(image.flatten().tolist()) for image in split.images}
    resampled = [tuple(image.flatten().tolist()) for image in result.split.images]
    assert set(resampled) == originals  # duplicates only, no new images
    assert len(resampled) == 40


def test_random_under_draws_a_subset():
    split = make_split([20, 5])
    result = resample_train(split, OmegaConf.create({"name": "random_under", "ratio": 1.0}), names(2), seed=0)
    originals = {tuple(image.flatten().tolist()) for image in split.images}
    resampled = [tuple(image.flatten().tolist()) for image in result.split.images]
    assert set(resampled) <= originals
    assert len(set(resampled)) == 10


def test_smote_keeps_dtype_and_shape():
    split = make_split([30, 6], size=5)
    result = resample_train(split, OmegaConf.create({"name": "smote", "ratio": 1.0, "k_neighbors": 3}), names(2), seed=0)
    assert result.split.images.dtype == torch.uint8
    assert tuple(result.split.images.shape[1:]) == (1, 5, 5)
    synthetic = result.split.images[len(split):]
    # Interpolations between class-1 images stay inside class 1's pixel range [60, 100).
    assert int(synthetic.min()) >= 60
    assert int(synthetic.max()) < 100


def test_smote_lowers_k_with_warning(caplog):
    split = make_split([30, 4])
    with caplog.at_level(logging.WARNING):
        result = resample_train(split, OmegaConf.create({"name": "smote", "ratio": 1.0, "k_neighbors": 5}), names(2), seed=0)
    assert result.class_counts == [30, 30]
    assert "k_neighbors=3" in caplog.text


def test_smote_single_sample_class_rejected():
    split = make_split([30, 1])
    with pytest.raises(ConfigError) as error:
        resample_train(split, OmegaConf.create({"name": "smote", "ratio": 1.0, "k_neighbors": 5}), names(2), seed=0)
    assert "c1" in str(error.value)


@pytest.mark.parametrize(
    ("power", "expected"),
    [
        (1.0, [0.8, 0.2]),  # data's own frequencies
        (0.0, [0.5, 0.5]),  # balanced
        (0.5, [2 / 3, 1 / 3]),  # sqrt(16) : sqrt(4) = 4 : 2
    ],
)
def test_sampler_class_probabilities_table(power, expected):
    assert sampler_class_probabilities([16, 4], power).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_weighted_sampler_draw_frequencies(power):
    counts = [160, 40, 10]
    split = make_split(counts)
    result = resample_train(split, OmegaConf.create({"name": "weighted_sampler", "power": power}), names(3), seed=0)
    expected = sampler_class_probabilities(counts, power)
    assert result.class_counts == np.round(expected * sum(counts)).astype(int).tolist()

    generator = torch.Generator().manual_seed(0)
    drawn = collections.Counter()
    for _ in range(100):  # 100 epochs of 210 draws
        for batch in epoch_batches(len(split), 64, generator, result.sample_weights(0)):
            drawn.update(split.labels[batch].tolist())
    total = sum(drawn.values())
    for label, probability in enumerate(expected):
        assert drawn[label] / total == pytest.approx(probability, abs=0.01)


def overlapping_split(counts: list[int], seed: int = 0) -> Split:
    """Classes whose pixel ranges overlap, so border and cleaning methods find work to do."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    images = rng.normal(100 + 10 * labels[:, None, None, None], 30, size=(len(labels), 1, 4, 4))
    return Split(torch.from_numpy(np.clip(images, 0, 255).astype(np.uint8)), torch.from_numpy(labels.astype(np.int64)))


NEW_OVER_SAMPLERS = [
    {"name": "borderline_smote", "ratio": 1.0, "k_neighbors": 3, "m_neighbors": 6, "kind": "borderline-1"},
    {"name": "borderline_smote", "ratio": 0.5, "k_neighbors": 3, "m_neighbors": 6, "kind": "borderline-2"},
]


@pytest.mark.parametrize("counts", [[60, 12], [60, 30, 12]])
@pytest.mark.parametrize("cfg", NEW_OVER_SAMPLERS, ids=lambda c: f"{c['name']}-{c['kind']}-{c['ratio']}")
def test_borderline_smote_exact_counts(cfg, counts):
    split = overlapping_split(counts)
    result = resample_train(split, OmegaConf.create(cfg), names(len(counts)), seed=0)
    goal = math.ceil(cfg["ratio"] * 60)
    assert result.class_counts == [max(n, goal) for n in counts]
    assert result.split.images.dtype == torch.uint8


@pytest.mark.parametrize("counts", [[60, 12], [60, 30, 12]])
def test_adasyn_counts_near_target(counts):
    split = overlapping_split(counts)
    result = resample_train(split, OmegaConf.create({"name": "adasyn", "ratio": 1.0, "k_neighbors": 5}), names(len(counts)), seed=0)
    assert result.class_counts[0] == 60
    for count in result.class_counts[1:]:
        assert abs(count - 60) <= 6  # ADASYN rounds per-sample shares, so it reaches the target within ~10%
    from imblearn.over_sampling import ADASYN

    targets = {c: 60 for c, n in enumerate(counts) if n < 60}
    _, labels = ADASYN(sampling_strategy=targets, n_neighbors=5, random_state=0).fit_resample(
        split.images.reshape(len(split), -1).numpy().astype(np.float32), split.labels.numpy()
    )
    assert result.class_counts == np.bincount(labels, minlength=len(counts)).tolist()


@pytest.mark.parametrize("counts", [[60, 12], [60, 30, 12]])
def test_smote_enn_cleans_after_smote(counts):
    split = overlapping_split(counts)
    cfg = {"name": "smote_enn", "ratio": 1.0, "k_neighbors": 3, "enn_neighbors": 3}
    result = resample_train(split, OmegaConf.create(cfg), names(len(counts)), seed=0)
    assert sum(result.class_counts) < 60 * len(counts)  # ENN removed samples from the balanced set
    assert all(0 < count <= 60 for count in result.class_counts)
    # Same result as imbalanced-learn's own pipeline on the same features.
    from imblearn.combine import SMOTEENN
    from imblearn.over_sampling import SMOTE
    from imblearn.under_sampling import EditedNearestNeighbours

    targets = {c: 60 for c, n in enumerate(counts) if n < 60}
    reference = SMOTEENN(smote=SMOTE(sampling_strategy=targets, k_neighbors=3, random_state=0), enn=EditedNearestNeighbours(n_neighbors=3, sampling_strategy="all"), random_state=0)
    _, labels = reference.fit_resample(split.images.reshape(len(split), -1).numpy().astype(np.float32), split.labels.numpy())
    assert result.class_counts == np.bincount(labels, minlength=len(counts)).tolist()


@pytest.mark.parametrize("counts", [[60, 12], [60, 30, 12]])
def test_smote_tomek_counts(counts):
    split = overlapping_split(counts)
    result = resample_train(split, OmegaConf.create({"name": "smote_tomek", "ratio": 1.0, "k_neighbors": 3}), names(len(counts)), seed=0)
    removed = 60 * len(counts) - sum(result.class_counts)
    assert removed >= 0
    assert removed % 2 == 0  # a Tomek link removes both of its samples
    assert all(count <= 60 for count in result.class_counts)


@pytest.mark.parametrize("counts", [[60, 12], [60, 30, 12]])
def test_tomek_links_keeps_minority(counts):
    split = overlapping_split(counts)
    result = resample_train(split, OmegaConf.create({"name": "tomek_links", "remove_from": "not_minority"}), names(len(counts)), seed=0)
    assert result.class_counts[-1] == counts[-1]
    assert sum(result.class_counts) < sum(counts)
    originals = {tuple(image.flatten().tolist()) for image in split.images}
    assert {tuple(image.flatten().tolist()) for image in result.split.images} <= originals


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize(("counts", "ratio", "expected"), [([60, 12], 1.0, [12, 12]), ([60, 30, 12], 0.5, [24, 24, 12])])
def test_near_miss_class_counts(version, counts, ratio, expected):
    split = overlapping_split(counts)
    cfg = {"name": "near_miss", "ratio": ratio, "version": version, "n_neighbors": 3}
    result = resample_train(split, OmegaConf.create(cfg), names(len(counts)), seed=0)
    if version == 3:
        # NearMiss-3 pre-selects neighbours of the minority and may keep fewer than the target (it warns).
        assert all(got <= want for got, want in zip(result.class_counts, expected))
        assert result.class_counts[-1] == expected[-1]
    else:
        assert result.class_counts == expected
    originals = {tuple(image.flatten().tolist()) for image in split.images}
    assert {tuple(image.flatten().tolist()) for image in result.split.images} <= originals


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "random_over", "ratio": 0.1},
        {"name": "smote", "ratio": 0.1, "k_neighbors": 3},
        {"name": "random_under", "ratio": 0.1},
        {"name": "near_miss", "ratio": 0.1, "version": 1, "n_neighbors": 3},
        {"name": "hybrid", "over_ratio": 0.1, "under_ratio": 1.0},
    ],
    ids=lambda c: c["name"],
)
def test_unreachable_ratio_rejected(cfg):
    split = make_split([40, 20])  # current ratio 0.5: 0.1 needs removing (over) or adding (under) samples
    with pytest.raises(ConfigError) as error:
        resample_train(split, OmegaConf.create(cfg), names(2), seed=0)
    assert "0.500" in str(error.value)


def test_progressive_sampler_first_and_last_epoch():
    counts = [160, 40, 10]
    split = make_split(counts)
    epochs = 5
    result = resample_train(split, OmegaConf.create({"name": "progressive_sampler"}), names(3), seed=0, max_epochs=epochs)
    generator = torch.Generator().manual_seed(0)
    for epoch, expected in ((0, [160 / 210, 40 / 210, 10 / 210]), (epochs - 1, [1 / 3, 1 / 3, 1 / 3])):
        drawn = collections.Counter()
        for _ in range(100):
            for batch in epoch_batches(len(split), 64, generator, result.sample_weights(epoch)):
                drawn.update(split.labels[batch].tolist())
        total = sum(drawn.values())
        for label, probability in enumerate(expected):
            assert drawn[label] / total == pytest.approx(probability, abs=0.01)


def test_progressive_probabilities_linear():
    from imbalance_sweep.resample import progressive_class_probabilities

    middle = progressive_class_probabilities([30, 10], epoch=2, max_epochs=5)  # halfway
    assert middle.tolist() == pytest.approx([0.5 * 0.75 + 0.5 * 0.5, 0.5 * 0.25 + 0.5 * 0.5])
