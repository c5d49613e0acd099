import itertools
import math

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from imbalance_sweep.augment import BatchAugmenter, class_strength_factors
from imbalance_sweep.config import CONF_DIR

# Every magnitude 0, read from the config file users start from.
NONE = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "augment" / "none.yaml"))


def augment_cfg(**overrides) -> DictConfig:
    return OmegaConf.create({**NONE, **overrides})


def random_batch(n: int = 8, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=generator)


def copies(n: int = 16, size: int = 16, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """n copies of one random image with values in [low, high]."""
    image = low + (high - low) * random_batch(1, 1, size, seed=1)
    return image.expand(n, -1, -1, -1).clone()


def assert_pairwise_different(batch: torch.Tensor) -> None:
    for i, j in itertools.combinations(range(len(batch)), 2):
        assert not torch.allclose(batch[i], batch[j], atol=1e-6), f"samples {i} and {j} are equal"


def test_zero_magnitudes_identity():
    augmenter = BatchAugmenter(augment_cfg())
    images = random_batch()

    assert not augmenter.enabled
    assert torch.equal(augmenter(images), images)


@pytest.mark.parametrize("key", ["rotation", "translate", "shear", "zoom", "hflip", "vflip", "brightness", "contrast", "noise_std"])
def test_any_magnitude_enables(key):
    assert BatchAugmenter(augment_cfg(**{key: 0.1})).enabled


@pytest.mark.parametrize(("key", "dims"), [("hflip", [-1]), ("vflip", [-2])])
def test_flip_probability_one(key, dims):
    images = random_batch()

    output = BatchAugmenter(augment_cfg(**{key: 1.0}))(images)

    torch.testing.assert_close(output, torch.flip(images, dims=dims), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("key", "value", "low", "high"),
    [
        ("rotation", 30.0, 0.0, 1.0),
        # Mid-range values keep brightness, contrast and noise clear of the clamp at 0 and 1.
        ("brightness", 0.5, 0.2, 0.6),
        ("contrast", 0.5, 0.2, 0.6),
        ("noise_std", 0.1, 0.3, 0.7),
    ],
)
def test_per_sample_parameters(key, value, low, high):
    images = copies(16, low=low, high=high)

    output = BatchAugmenter(augment_cfg(**{key: value}))(images, generator=torch.Generator().manual_seed(0))

    assert_pairwise_different(output)


def test_brightness_scales_each_sample():
    images = copies(16, low=0.2, high=0.6)

    output = BatchAugmenter(augment_cfg(brightness=0.5))(images, generator=torch.Generator().manual_seed(0))

    factors = (output / images).flatten(1)
    # One factor per sample, constant over its pixels and within [1 - 0.5, 1 + 0.5].
    torch.testing.assert_close(factors.min(dim=1).values, factors.max(dim=1).values)
    assert factors.min() >= 0.5
    assert factors.max() <= 1.5


def test_contrast_keeps_sample_mean():
    images = copies(16, low=0.2, high=0.6)

    output = BatchAugmenter(augment_cfg(contrast=0.5))(images, generator=torch.Generator().manual_seed(0))

    torch.testing.assert_close(output.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)))


def test_noise_std_matches_config():
    images = torch.full((64, 1, 32, 32), 0.5)

    output = BatchAugmenter(augment_cfg(noise_std=0.1))(images, generator=torch.Generator().manual_seed(0))

    # At 0.5 the clamp to [0, 1] is 5 std away, so the std of 65,536 draws stays within 1% of 0.1.
    assert (output - images).std().item() == pytest.approx(0.1, rel=0.01)


EVERYTHING = {
    "rotation": 30.0,
    "translate": 0.2,
    "shear": 10.0,
    "zoom": 0.2,
    "hflip": 0.5,
    "vflip": 0.5,
    "brightness": 0.5,
    "contrast": 0.5,
    "noise_std": 0.2,
}


def test_seeded_generator_repeats():
    augmenter = BatchAugmenter(augment_cfg(**EVERYTHING))
    images = random_batch()

    first = augmenter(images, generator=torch.Generator().manual_seed(7))
    second = augmenter(images, generator=torch.Generator().manual_seed(7))
    other = augmenter(images, generator=torch.Generator().manual_seed(8))

    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_output_range_shape_dtype():
    augmenter = BatchAugmenter(augment_cfg(**EVERYTHING))
    images = random_batch(n=32)

    output = augmenter(images, generator=torch.Generator().manual_seed(0))

    assert output.shape == images.shape
    assert output.dtype == images.dtype
    assert output.min() >= 0.0
    assert output.max() <= 1.0


def test_affine_zero_magnitude_identity():
    images = random_batch()

    matrices = BatchAugmenter(augment_cfg()).affine_matrices(images)

    assert torch.equal(matrices, torch.eye(3).expand(len(images), 3, 3))


def test_affine_rotation_only():
    images = random_batch(n=256)

    matrices = BatchAugmenter(augment_cfg(rotation=30.0)).affine_matrices(images, generator=torch.Generator().manual_seed(0))

    blocks = matrices[:, :2, :2]
    eye = torch.eye(2).expand(len(images), 2, 2)
    torch.testing.assert_close(blocks @ blocks.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(blocks), torch.ones(len(images)))
    torch.testing.assert_close(matrices[:, :2, 2], torch.zeros(len(images), 2))
    angles = torch.rad2deg(torch.atan2(blocks[:, 1, 0], blocks[:, 0, 0]))
    assert angles.abs().max() <= 30.0 + 1e-4
    # 256 uniform draws from [-30, 30] reach beyond 25 degrees on both sides.
    assert angles.max() > 25.0
    assert angles.min() < -25.0


def bright_pixel_centroids(batch: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted (x, y) centre of each single-channel image, in pixels."""
    size = batch.shape[-1]
    coords = torch.arange(size, dtype=batch.dtype)
    weights = batch[:, 0]
    total = weights.sum(dim=(1, 2))
    x = (weights.sum(dim=1) * coords).sum(dim=1) / total
    y = (weights.sum(dim=2) * coords).sum(dim=1) / total
    return torch.stack([x, y], dim=1)


def test_translate_moves_pixel_bounded():
    size = 33
    images = torch.zeros(64, 1, size, size)
    images[:, 0, size // 2, size // 2] = 1.0
    augmenter = BatchAugmenter(augment_cfg(translate=0.25))

    output = augmenter(images, generator=torch.Generator().manual_seed(0))

    shift = bright_pixel_centroids(output) - size // 2
    assert shift.abs().max() <= 0.25 * size + 1e-3
    # 64 draws from [-0.25, 0.25] per axis move the pixel more than 0.2 of the side at least once.
    assert shift.abs().max() > 0.2 * size


def test_translate_matches_matrix():
    size = 33
    images = torch.zeros(16, 1, size, size)
    images[:, 0, size // 2, size // 2] = 1.0
    augmenter = BatchAugmenter(augment_cfg(translate=0.25))

    matrices = augmenter.affine_matrices(images, generator=torch.Generator().manual_seed(3))
    output = augmenter(images, generator=torch.Generator().manual_seed(3))

    # Bilinear sampling reproduces linear functions, so the centroid moves by exactly the shift.
    # The matrix stores the shift in [-1, 1] coordinates, where one image side is 2.
    expected = matrices[:, :2, 2] * size / 2
    torch.testing.assert_close(bright_pixel_centroids(output) - size // 2, expected, atol=1e-3, rtol=0)


def test_rotation_keeps_centre_pixel():
    size = 33
    images = torch.zeros(16, 1, size, size)
    images[:, 0, size // 2, size // 2] = 1.0

    output = BatchAugmenter(augment_cfg(rotation=45.0))(images, generator=torch.Generator().manual_seed(0))

    torch.testing.assert_close(output[:, 0, size // 2, size // 2], torch.ones(16), atol=1e-5, rtol=0)


def test_zoom_scales_distance():
    size = 33
    centre = size // 2
    images = torch.zeros(16, 1, size, size)
    images[:, 0, centre, centre + 8] = 1.0
    augmenter = BatchAugmenter(augment_cfg(zoom=0.25))

    matrices = augmenter.affine_matrices(images, generator=torch.Generator().manual_seed(0))
    output = augmenter(images, generator=torch.Generator().manual_seed(0))

    # Zoom scales about the image centre, so the pixel 8 px right of it moves to 8 * scale px.
    # Sampling at a spacing of 1 / scale px blurs the centroid by a fraction of a pixel (0.13 px at
    # most with this seed), while ignoring the zoom would be off by up to 2 px.
    distance = bright_pixel_centroids(output)[:, 0] - centre
    torch.testing.assert_close(distance, 8 * matrices[:, 0, 0], atol=0.25, rtol=0)
    assert matrices[:, 0, 0].min() >= 0.75
    assert matrices[:, 0, 0].max() <= 1.25


def rgb_copies(n: int = 16, size: int = 8) -> torch.Tensor:
    image = random_batch(1, 3, size, seed=2)
    return image.expand(n, -1, -1, -1).clone()


@pytest.mark.parametrize(("key", "value"), [("saturation", 0.8), ("hue", 0.3)])
def test_colour_transforms_per_sample(key, value):
    output = BatchAugmenter(augment_cfg(**{key: value}))(rgb_copies(), generator=torch.Generator().manual_seed(0))
    assert_pairwise_different(output)


@pytest.mark.parametrize(("key", "value"), [("saturation", 0.8), ("hue", 0.3)])
def test_colour_transforms_skip_gray(key, value):
    images = copies()
    output = BatchAugmenter(augment_cfg(**{key: value}))(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(output, images)


def test_hue_matches_torchvision():
    import torchvision.transforms.v2.functional as TF

    from imbalance_sweep.augment import _shift_hue

    images = random_batch(4, 3, 6)
    for shift in (-0.4, 0.1, 0.5):
        expected = TF.adjust_hue(images, shift)
        assert torch.allclose(_shift_hue(images, torch.full((4,), shift)), expected, atol=1e-5)


def test_salt_pepper_fraction():
    images = torch.full((64, 1, 32, 32), 0.5)
    output = BatchAugmenter(augment_cfg(salt_pepper=0.1))(images, generator=torch.Generator().manual_seed(0))
    changed = output != 0.5
    assert set(output[changed].unique().tolist()) == {0.0, 1.0}
    assert changed.float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert (output == 1.0).sum().item() == pytest.approx((output == 0.0).sum().item(), rel=0.1)


def test_erasing_area_within_bounds():
    images = torch.full((200, 1, 20, 20), 0.5)
    augmenter = BatchAugmenter(augment_cfg(erasing=1.0))
    mask = augmenter._rectangles(200, 20, 20, torch.ones(200, dtype=torch.bool), images, torch.Generator().manual_seed(0), area=None)
    areas = mask.flatten(1).float().mean(dim=1)
    assert areas.min().item() >= 1 / 400
    assert areas.max().item() <= 0.45  # 33% of the image, plus rounding of both sides to whole pixels
    output = augmenter(images, generator=torch.Generator().manual_seed(0))
    assert (output != 0.5).flatten(1).any(dim=1).all()  # erasing probability 1 touches every sample


def test_erasing_probability_zero_identity():
    images = random_batch()
    assert torch.equal(BatchAugmenter(augment_cfg(erasing=0.0))(images), images)


def test_mixup_convex_combination():
    images = random_batch(16, 1, 8)
    labels = torch.arange(16)
    augmenter = BatchAugmenter(augment_cfg(mixup_alpha=0.4))
    mixed, partners, lam = augmenter.mix(images, labels, torch.Generator().manual_seed(0))
    assert ((lam >= 0) & (lam <= 1)).all()
    assert len(lam.unique()) > 8  # one weight per sample
    partner_index = partners  # labels are indices here
    expected = lam.view(-1, 1, 1, 1) * images + (1 - lam.view(-1, 1, 1, 1)) * images[partner_index]
    assert torch.allclose(mixed, expected, atol=1e-6)


def test_cutmix_share_equals_pasted_area():
    images = torch.zeros(32, 1, 10, 10)
    images += torch.arange(32).float().view(32, 1, 1, 1) / 100  # each image constant, distinct
    labels = torch.arange(32)
    augmenter = BatchAugmenter(augment_cfg(cutmix_alpha=1.0))
    mixed, partners, lam = augmenter.mix(images, labels, torch.Generator().manual_seed(0))
    own = (mixed == images).flatten(1).float().mean(dim=1)
    same_partner = partners == labels
    assert torch.allclose(own[~same_partner], lam[~same_partner], atol=1e-6)


def test_mix_prob_zero_leaves_batch():
    images = random_batch()
    mixed, partners, lam = BatchAugmenter(augment_cfg(mixup_alpha=1.0, mix_prob=0.0)).mix(images, torch.arange(8))
    assert torch.equal(mixed, images)
    assert partners is None


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_policy_draws_per_sample(policy):
    torch.manual_seed(0)
    image = (random_batch(1, 3, 16, seed=4) * 255).to(torch.uint8)
    output = BatchAugmenter(augment_cfg(policy=policy, policy_magnitude=15)).apply_policy(image.expand(16, -1, -1, -1).clone())
    assert output.dtype == torch.uint8
    assert len({tuple(sample.flatten().tolist()) for sample in output}) > 4


@pytest.mark.parametrize(
    ("counts", "boost", "expected"),
    [
        ([100, 10, 1], 0.0, [1.0, 1.0, 1.0]),
        ([100, 10, 1], 1.0, [0.0, 1.0, 2.0]),  # rarity 0, 1/2, 1 on the log scale
        ([100, 10, 1], 0.5, [0.5, 1.0, 1.5]),
        ([100, 10, 1], 2.0, [0.0, 1.0, 3.0]),  # clamped at 0
        ([50, 50], 1.0, [1.0, 1.0]),  # no imbalance: no change
    ],
)
def test_class_strength_factors_table(counts, boost, expected):
    assert class_strength_factors(counts, boost).tolist() == pytest.approx(expected)


def test_boost_leaves_largest_class_untouched():
    cfg = augment_cfg(rotation=30.0, noise_std=0.1, erasing=0.5, salt_pepper=0.1, rare_class_boost=1.0)
    augmenter = BatchAugmenter(cfg, class_counts=[100, 10, 1])
    images = random_batch(12, 1, 8)
    labels = torch.tensor([0, 1, 2] * 4)
    output = augmenter(images, labels, torch.Generator().manual_seed(0))
    common = labels == 0
    assert torch.equal(output[common], images[common])
    assert not torch.allclose(output[labels == 2], images[labels == 2])


def test_boost_zero_base_magnitude_leaves_everything():
    augmenter = BatchAugmenter(augment_cfg(rare_class_boost=1.0), class_counts=[100, 10, 1])
    images = random_batch(6, 1, 8)
    assert torch.equal(augmenter(images, torch.tensor([0, 1, 2, 0, 1, 2])), images)
