"""Per-sample augmentation of whole training batches on the training device.

torchvision.transforms.v2 applied to a batch tensor draws one set of random parameters for the whole
batch. Here every sample gets its own angle, shift, shear, zoom and flips, composed into one affine
matrix per sample and applied with a single `grid_sample` call, then its own photometric changes,
noise and erasing, then optional Mixup or CutMix. Images are float in [0, 1], shaped (N, C, H, W),
and square. RandAugment and TrivialAugment (torchvision) run first, per sample, on uint8 images.

Class-conditional strength: with `rare_class_boost` b, class c's magnitudes and probabilities are
multiplied by max(0, 1 + b * (2 * rarity_c - 1)), where rarity_c = log(n_max / n_c) / log(n_max / n_min)
over the training split as loaded (0 for the largest class, 1 for the smallest). So b = 0 treats all
classes alike, and b = 1 leaves the largest class untouched and doubles the strength for the smallest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchvision.transforms import v2

_GEOMETRIC = ("rotation", "translate", "shear", "zoom", "hflip", "vflip")
_PIXEL = ("brightness", "contrast", "saturation", "hue", "noise_std", "salt_pepper", "erasing")
_LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, as PIL's "L" conversion
_ERASE_AREA = (0.02, 0.33)  # fraction of the image an erased rectangle covers
_ERASE_ASPECT = (0.3, 3.3)  # height / width of an erased rectangle


def class_strength_factors(counts: Sequence[int], boost: float) -> torch.Tensor:
    """Return each class's multiplier of augmentation strength (see the module docstring)."""
    n = torch.as_tensor(list(counts), dtype=torch.float64).clamp(min=1)
    if boost == 0 or n.max() == n.min():
        return torch.ones(len(n), dtype=torch.float32)
    rarity = (n.max() / n).log() / (n.max() / n.min()).log()
    return (1 + boost * (2 * rarity - 1)).clamp(min=0).float()


class BatchAugmenter:
    """Random per-sample transforms for training batches; every magnitude 0 makes it the exact identity."""

    def __init__(self, cfg: DictConfig, class_counts: Sequence[int] | None = None, seed: int = 0) -> None:
        for name in (*_GEOMETRIC, *_PIXEL, "mixup_alpha", "cutmix_alpha", "mix_prob"):
            setattr(self, name, float(cfg.get(name, 0.0)))
        self.padding_mode = str(cfg.get("padding_mode", "zeros"))
        self.policy = str(cfg.get("policy", "none"))
        self.policy_magnitude = int(cfg.get("policy_magnitude", 9))
        self.policy_num_ops = int(cfg.get("policy_num_ops", 2))
        boost = float(cfg.get("rare_class_boost", 0.0))
        self.class_factors = None if boost == 0 or class_counts is None else class_strength_factors(class_counts, boost)
        self._beta_rng = np.random.default_rng(seed)
        self._policies: dict[int, v2.Transform] = {}  # built once per magnitude, reused every batch

    @property
    def geometric(self) -> bool:
        return any(getattr(self, name) > 0 for name in _GEOMETRIC)

    @property
    def mixing(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0

    @property
    def enabled(self) -> bool:
        pixel = any(getattr(self, name) > 0 for name in _PIXEL)
        return self.geometric or pixel or self.mixing or self.policy != "none"

    def _factors(self, labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
        if self.class_factors is None or labels is None:
            return None
        return self.class_factors.to(device)[labels]

    # ---- random draws: one value per sample, from the caller's generator -------------------------

    def _rand(self, n: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        values = torch.rand(n, generator=generator, device=generator.device if generator else "cpu")
        return values.to(device=like.device, dtype=torch.float32)

    def _uniform(self, n: int, bound: float, like: torch.Tensor, generator, factors: torch.Tensor | None) -> torch.Tensor:
        """Draw n values from U(-bound_i, bound_i), with bound_i = bound * factor_i."""
        values = (self._rand(n, like, generator) * 2 - 1) * bound
        return values if factors is None else values * factors

    def _bernoulli(self, n: int, p: float, like: torch.Tensor, generator, factors: torch.Tensor | None) -> torch.Tensor:
        probability = torch.full((n,), p, device=like.device) if factors is None else (p * factors).clamp(max=1)
        return (self._rand(n, like, generator) < probability).float()

    # ---- the pipeline ----------------------------------------------------------------------------

    def apply_policy(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Apply RandAugment or TrivialAugmentWide to each uint8 image separately (own random ops each)."""
        if self.policy == "none":
            return images
        factors = self._factors(labels, len(images), images.device)
        out = images.clone()
        for index in range(len(images)):
            factor = 1.0 if factors is None else float(factors[index])
            if factor == 0:
                continue
            if self.policy == "randaugment":
                transform = self._policy_transform(min(30, round(self.policy_magnitude * factor)))
            else:
                # TrivialAugment draws its own magnitude; a factor below 1 applies it to fewer samples.
                if factor < 1 and float(torch.rand(())) >= factor:
                    continue
                transform = self._policy_transform(-1)
            out[index] = transform(images[index])
        return out

    def _policy_transform(self, magnitude: int) -> v2.Transform:
        """Return the cached policy transform; `magnitude` -1 stands for TrivialAugmentWide."""
        if magnitude not in self._policies:
            if magnitude < 0:
                self._policies[magnitude] = v2.TrivialAugmentWide()
            else:
                self._policies[magnitude] = v2.RandAugment(num_ops=self.policy_num_ops, magnitude=magnitude)
        return self._policies[magnitude]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply geometric and pixel transforms to float images in [0, 1]."""
        factors = self._factors(labels, len(images), images.device)
        original = images
        if self.geometric:
            images = self._warp(images, generator, factors)
        images = self._photometric(images, generator, factors)
        images = self._noise_and_erasing(images, generator, factors)
        if factors is not None:
            # Samples whose class gets strength 0 stay bit-identical, not just nearly so.
            untouched = (factors == 0).view(-1, 1, 1, 1)
            images = torch.where(untouched, original, images)
        return images

    def affine_matrices(self, images: torch.Tensor, generator=None, factors: torch.Tensor | None = None) -> torch.Tensor:
        """Return one forward 3x3 affine matrix per sample in grid_sample's normalized coordinates."""
        n = images.shape[0]
        angle = torch.deg2rad(self._uniform(n, self.rotation, images, generator, factors))
        shear_x = torch.tan(torch.deg2rad(self._uniform(n, self.shear, images, generator, factors)))
        shear_y = torch.tan(torch.deg2rad(self._uniform(n, self.shear, images, generator, factors)))
        scale = 1 + self._uniform(n, self.zoom, images, generator, factors)
        # Normalized coordinates span [-1, 1], so a shift of `translate` image sides is 2 * translate.
        shift_x = 2 * self._uniform(n, self.translate, images, generator, factors)
        shift_y = 2 * self._uniform(n, self.translate, images, generator, factors)
        flip_x = 1 - 2 * self._bernoulli(n, self.hflip, images, generator, factors)
        flip_y = 1 - 2 * self._bernoulli(n, self.vflip, images, generator, factors)

        eye = torch.eye(3, device=images.device).expand(n, 3, 3)
        flip = eye.clone()
        flip[:, 0, 0], flip[:, 1, 1] = flip_x, flip_y
        zoom = eye.clone()
        zoom[:, 0, 0], zoom[:, 1, 1] = scale, scale
        shear = eye.clone()
        shear[:, 0, 1], shear[:, 1, 0] = shear_x, shear_y
        rotate = eye.clone()
        rotate[:, 0, 0], rotate[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
        rotate[:, 1, 0], rotate[:, 1, 1] = torch.sin(angle), torch.cos(angle)
        shift = eye.clone()
        shift[:, 0, 2], shift[:, 1, 2] = shift_x, shift_y
        return shift @ rotate @ shear @ zoom @ flip

    def _warp(self, images: torch.Tensor, generator, factors) -> torch.Tensor:
        forward = self.affine_matrices(images, generator, factors)
        # grid_sample looks up, for each output pixel, where it came from: that is the inverse map.
        theta = torch.linalg.inv(forward)[:, :2, :].to(images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)

    def _photometric(self, images: torch.Tensor, generator, factors) -> torch.Tensor:
        n = images.shape[0]
        changed = False
        if self.brightness > 0:
            factor = 1 + self._uniform(n, self.brightness, images, generator, factors)
            images = images * factor.view(n, 1, 1, 1)
            changed = True
        if self.contrast > 0:
            factor = 1 + self._uniform(n, self.contrast, images, generator, factors)
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = (images - mean) * factor.view(n, 1, 1, 1) + mean
            changed = True
        if images.shape[1] == 3 and self.saturation > 0:
            factor = 1 + self._uniform(n, self.saturation, images, generator, factors)
            gray = _grayscale(images)
            images = gray + (images - gray) * factor.view(n, 1, 1, 1)
            changed = True
        if images.shape[1] == 3 and self.hue > 0:
            shift = self._uniform(n, self.hue, images, generator, factors)
            images = _shift_hue(images.clamp(0, 1), shift)
            changed = True
        return images.clamp(0.0, 1.0) if changed else images

    def _noise_and_erasing(self, images: torch.Tensor, generator, factors) -> torch.Tensor:
        n, channels, height, width = images.shape
        device = generator.device if generator else "cpu"
        if self.noise_std > 0:
            std = torch.full((n,), self.noise_std, device=images.device) if factors is None else self.noise_std * factors
            noise = torch.randn(images.shape, generator=generator, device=device).to(images.device)
            images = (images + noise * std.view(n, 1, 1, 1)).clamp(0.0, 1.0)
        if self.salt_pepper > 0:
            amount = torch.full((n,), self.salt_pepper, device=images.device) if factors is None else (self.salt_pepper * factors).clamp(max=1)
            hit = torch.rand((n, 1, height, width), generator=generator, device=device).to(images.device) < amount.view(n, 1, 1, 1)
            salt = torch.rand((n, 1, height, width), generator=generator, device=device).to(images.device) < 0.5
            images = torch.where(hit, salt.to(images.dtype).expand(-1, channels, -1, -1), images)
        if self.erasing > 0:
            chosen = self._bernoulli(n, self.erasing, images, generator, factors).bool()
            mask = self._rectangles(n, height, width, chosen, images, generator, area=None)
            fill = torch.rand(images.shape, generator=generator, device=device).to(images.device)
            images = torch.where(mask, fill, images)
        return images

    def _rectangles(self, n, height, width, chosen, like, generator, area: torch.Tensor | None) -> torch.Tensor:
        """Return an (N, 1, H, W) mask with one random rectangle per chosen sample.

        Without `area`, each rectangle covers a random 2-33% of the image with aspect 0.3-3.3 (random
        erasing). With `area` (fractions), the rectangles are squares-to-scale of that area (CutMix).
        """
        if area is None:
            low, high = _ERASE_AREA
            area = low + (high - low) * self._rand(n, like, generator)
            log_aspect = math.log(_ERASE_ASPECT[0]) + (math.log(_ERASE_ASPECT[1]) - math.log(_ERASE_ASPECT[0])) * self._rand(n, like, generator)
            aspect = log_aspect.exp()
        else:
            aspect = torch.ones(n, device=like.device)
        box_h = (area * aspect).sqrt().mul(height).round().clamp(1, height)
        box_w = (area / aspect).sqrt().mul(width).round().clamp(1, width)
        top = ((height - box_h + 1) * self._rand(n, like, generator)).floor()
        left = ((width - box_w + 1) * self._rand(n, like, generator)).floor()
        rows = torch.arange(height, device=like.device).view(1, height, 1)
        columns = torch.arange(width, device=like.device).view(1, 1, width)
        inside = (
            (rows >= top.view(n, 1, 1)) & (rows < (top + box_h).view(n, 1, 1))
            & (columns >= left.view(n, 1, 1)) & (columns < (left + box_w).view(n, 1, 1))
        )
        return (inside & chosen.view(n, 1, 1)).unsqueeze(1)

    def mix(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Mix each chosen sample with a random partner by Mixup or CutMix.

        Returns the images, the partners' labels and each sample's share lam of its own image
        (1 for samples left unmixed), or `(images, None, None)` when mixing is off. With both alphas
        set, each mixed sample uses Mixup or CutMix with equal chance.
        """
        if not self.mixing:
            return images, None, None
        n, _, height, width = images.shape
        device = images.device
        factors = self._factors(labels, n, device)
        partner = torch.randperm(n, generator=generator, device=generator.device if generator else "cpu").to(device)
        chosen = self._bernoulli(n, self.mix_prob, images, generator, factors).bool()

        use_cutmix = torch.zeros(n, dtype=torch.bool, device=device)
        if self.cutmix_alpha > 0 and self.mixup_alpha > 0:
            use_cutmix = self._rand(n, images, generator) < 0.5
        elif self.cutmix_alpha > 0:
            use_cutmix[:] = True
        alpha = np.where(use_cutmix.cpu().numpy(), self.cutmix_alpha or 1.0, self.mixup_alpha or 1.0)
        lam = torch.as_tensor(self._beta_rng.beta(alpha, alpha), dtype=torch.float32, device=device)
        lam = torch.where(chosen, lam, torch.ones_like(lam))

        mixed = lam.view(n, 1, 1, 1) * images + (1 - lam.view(n, 1, 1, 1)) * images[partner]
        cut = chosen & use_cutmix
        if cut.any():
            box = self._rectangles(n, height, width, cut, images, generator, area=1 - lam)
            mixed = torch.where(cut.view(n, 1, 1, 1), torch.where(box, images[partner], images), mixed)
            # Rounding the box to whole pixels changes the pasted share: use the real one.
            pasted = box.flatten(1).float().mean(dim=1)
            lam = torch.where(cut, 1 - pasted, lam)
        return mixed, labels[partner], lam


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(_LUMINANCE, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each RGB image's hue by `shift` (fraction of the colour circle) through HSV."""
    red, green, blue = images.unbind(dim=1)
    value, _ = images.max(dim=1)
    minimum, _ = images.min(dim=1)
    chroma = value - minimum
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        value == red, ((green - blue) / safe_chroma) % 6,
        torch.where(value == green, (blue - red) / safe_chroma + 2, (red - green) / safe_chroma + 4),
    ) / 6
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), torch.zeros_like(value))
    # HSV back to RGB: channel k = V - V * S * clamp(min(m, 4 - m), 0, 1), m = (k + 6 H) mod 6.
    channels = []
    for k in (5, 3, 1):
        m = (k + hue * 6) % 6
        channels.append(value - value * saturation * torch.clamp(torch.minimum(m, 4 - m), 0, 1))
    return torch.stack(channels, dim=1)


def build_augmenter(cfg: DictConfig, class_counts: Sequence[int] | None = None, seed: int = 0) -> BatchAugmenter:
    return BatchAugmenter(cfg, class_counts, seed)
