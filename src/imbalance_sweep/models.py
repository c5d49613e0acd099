"""Model builders: a small CNN for fast CPU sweeps and a ResNet-18 adapted to small images."""

from __future__ import annotations

import torchvision
from omegaconf import DictConfig
from torch import nn

from imbalance_sweep.errors import ConfigError


def small_cnn(in_channels: int, num_classes: int, image_size: int, width: int, depth: int, dropout: float) -> nn.Module:
    """`depth` blocks of conv3x3-BN-ReLU; each block doubles the width and halves the map while it is >= 4 px."""
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for block in range(depth):
        out = width * 2**block
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        if size >= 4:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


def resnet18_small(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pooling, for 8-64 px inputs."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(cfg: DictConfig, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    if cfg.name == "small_cnn":
        return small_cnn(in_channels, num_classes, image_size, cfg.width, cfg.depth, cfg.dropout)
    if cfg.name == "resnet18":
        return resnet18_small(in_channels, num_classes)
    raise ConfigError(f"unknown model.name {cfg.name!r}: use small_cnn or resnet18")
