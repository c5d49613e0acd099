"""Per-sample augmentation of whole training batches on the training device.

torchvision.transforms.v2 applied to a batch tensor draws one set of random parameters for the whole
batch. Here every sample gets its own angle, shift, shear, zoom and flips, composed into one affine
matrix per sample and applied with a single `grid_sample` call, then its own brightness, contrast and
noise. Images are float in [0, 1], shaped (N, C, H, W) and square.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

_GEOMETRIC = ("rotation", "translate", "shear", "zoom", "hflip", "vflip")
_PHOTOMETRIC = ("brightness", "contrast", "noise_std")


class BatchAugmenter:
    """Random per-sample transforms; every magnitude 0 makes it the exact identity."""

    def __init__(self, cfg: DictConfig) -> None:
        self.rotation = float(cfg.rotation)
        self.translate = float(cfg.translate)
        self.shear = float(cfg.shear)
        self.zoom = float(cfg.zoom)
        self.hflip = float(cfg.hflip)
        self.vflip = float(cfg.vflip)
        self.brightness = float(cfg.brightness)
        self.contrast = float(cfg.contrast)
        self.noise_std = float(cfg.noise_std)
        self.padding_mode = str(cfg.padding_mode)

    @property
    def geometric(self) -> bool:
        return any(getattr(self, name) > 0 for name in _GEOMETRIC)

    @property
    def enabled(self) -> bool:
        return self.geometric or any(getattr(self, name) > 0 for name in _PHOTOMETRIC)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.geometric:
            images = self._warp(images, generator)
        images = self._photometric(images, generator)
        return images

    def _uniform(self, n: int, bound: float, like: torch.Tensor, generator) -> torch.Tensor:
        """Draw n values from U(-bound, bound) on the device of `like`."""
        values = torch.rand(n, generator=generator, device=generator.device if generator else "cpu")
        return ((values * 2 - 1) * bound).to(device=like.device, dtype=torch.float32)

    def _bernoulli(self, n: int, p: float, like: torch.Tensor, generator) -> torch.Tensor:
        values = torch.rand(n, generator=generator, device=generator.device if generator else "cpu")
        return (values < p).to(device=like.device, dtype=torch.float32)

    def affine_matrices(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return one forward 3x3 affine matrix per sample in grid_sample's normalized coordinates."""
        n = images.shape[0]
        angle = torch.deg2rad(self._uniform(n, self.rotation, images, generator))
        shear_x = torch.tan(torch.deg2rad(self._uniform(n, self.shear, images, generator)))
        shear_y = torch.tan(torch.deg2rad(self._uniform(n, self.shear, images, generator)))
        scale = 1 + self._uniform(n, self.zoom, images, generator)
        # Normalized coordinates span [-1, 1], so a shift of `translate` image sides is 2 * translate.
        shift_x = 2 * self._uniform(n, self.translate, images, generator)
        shift_y = 2 * self._uniform(n, self.translate, images, generator)
        flip_x = 1 - 2 * self._bernoulli(n, self.hflip, images, generator)
        flip_y = 1 - 2 * self._bernoulli(n, self.vflip, images, generator)

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

    def _warp(self, images: torch.Tensor, generator) -> torch.Tensor:
        forward = self.affine_matrices(images, generator)
        # grid_sample looks up, for each output pixel, where it came from: that is the inverse map.
        theta = torch.linalg.inv(forward)[:, :2, :].to(images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)

    def _photometric(self, images: torch.Tensor, generator) -> torch.Tensor:
        n = images.shape[0]
        changed = False
        if self.brightness > 0:
            factor = 1 + self._uniform(n, self.brightness, images, generator)
            images = images * factor.view(n, 1, 1, 1)
            changed = True
        if self.contrast > 0:
            factor = 1 + self._uniform(n, self.contrast, images, generator)
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = (images - mean) * factor.view(n, 1, 1, 1) + mean
            changed = True
        if self.noise_std > 0:
            noise = torch.randn(images.shape, generator=generator, device=generator.device if generator else "cpu")
            images = images + noise.to(images.device) * self.noise_std
            changed = True
        return images.clamp(0.0, 1.0) if changed else images


def build_augmenter(cfg: DictConfig) -> BatchAugmenter:
    return BatchAugmenter(cfg)


