"""Model builders: a small CNN for fast CPU sweeps and a ResNet-18 adapted to small images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from omegaconf import DictConfig
from torch import nn

from imbalance_sweep.errors import ConfigError


class CosineClassifier(nn.Module):
    """Linear layer on L2-normalised features and weights: logits are cosines in [-1, 1]."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))


def small_cnn(
    in_channels: int, num_classes: int, image_size: int, width: int, depth: int, dropout: float, cosine_head: bool = False
) -> nn.Module:
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
    head = CosineClassifier(channels, num_classes) if cosine_head else nn.Linear(channels, num_classes)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), head]
    return nn.Sequential(*layers)


def resnet18_small(in_channels: int, num_classes: int, cosine_head: bool = False) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pooling, for 8-64 px inputs."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    if cosine_head:
        model.fc = CosineClassifier(model.fc.in_features, num_classes)
    return model


def build_model(cfg: DictConfig, in_channels: int, num_classes: int, image_size: int, cosine_head: bool = False) -> nn.Module:
    """Build the configured model; `cosine_head` swaps the last linear layer for a `CosineClassifier`."""
    if cfg.name == "small_cnn":
        return small_cnn(in_channels, num_classes, image_size, cfg.width, cfg.depth, cfg.dropout, cosine_head)
    if cfg.name == "resnet18":
        return resnet18_small(in_channels, num_classes, cosine_head)
    raise ConfigError(f"unknown model.name {cfg.name!r}: use small_cnn or resnet18")
