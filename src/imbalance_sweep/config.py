"""Locations of the config tree and validation of a composed run config.

Hydra composes the config from `conf/`. This module checks the values Hydra cannot check (names of
options, ranges, required paths) and raises `ConfigError` with one line naming the key and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imbalance_sweep.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
SWEEPS_DIR = PROJECT_ROOT / "sweeps"

CONFIG_GROUPS = ("data", "model", "augment", "loss", "resample", "optim", "trainer", "tracking")
DATA_SOURCES = ("digits", "npz", "imagefolder")
MODELS = ("small_cnn", "resnet18")
LOSSES = ("ce", "weighted_ce", "focal", "class_balanced", "ldam", "balanced_softmax", "logit_adjusted")
WEIGHT_SCHEMES = ("inverse", "sqrt_inverse", "effective_number")
RESAMPLERS = (
    "none", "random_over", "random_under", "hybrid", "smote", "borderline_smote", "adasyn", "smote_enn",
    "smote_tomek", "tomek_links", "near_miss", "weighted_sampler", "progressive_sampler",
)
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "none")
PADDING_MODES = ("zeros", "border", "reflection")
# Upper bound of each augmentation setting; every lower bound is 0.
AUGMENT_LIMITS = {
    "rotation": 180.0, "translate": 1.0, "shear": 89.0, "zoom": 1.0, "hflip": 1.0, "vflip": 1.0,
    "brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.5, "noise_std": 1.0,
    "salt_pepper": 1.0, "erasing": 1.0, "mixup_alpha": 100.0, "cutmix_alpha": 100.0, "mix_prob": 1.0,
    "policy_magnitude": 30, "policy_num_ops": 14, "rare_class_boost": 10.0,
}
POLICIES = ("none", "randaugment", "trivialaugment")


def has_key(cfg: DictConfig, key: str) -> bool:
    """Return whether the dotted `key` exists in `cfg`, even when its value is null."""
    missing = object()
    return OmegaConf.select(cfg, key, default=missing) is not missing


def group_folders() -> dict[str, Path]:
    """Map every config group to the folder holding its option files."""
    folders = {group: CONF_DIR / group for group in CONFIG_GROUPS}
    folders["sweep"] = SWEEPS_DIR
    return folders


def _choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> str:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        group, _, field_name = key.partition(".")
        example = f"{group}={allowed[0]}" if field_name == "name" else f"{key}={allowed[0]}"
        raise ConfigError(f"unknown {key} {value!r}: use one of {', '.join(allowed)} (for example `{example}`)")
    return value


def _number(cfg: DictConfig, key: str, low: float, high: float, *, low_open: bool = False) -> float:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        bracket = "(" if low_open else "["
        raise ConfigError(f"{key}={value!r} is not a number: set {key} to a number in {bracket}{low}, {high}]")
    below = value <= low if low_open else value < low
    if below or value > high:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{key}={value} is outside {bracket}{low}, {high}]: set {key} to a value in that range")
    return float(value)


def _ratio(cfg: DictConfig, key: str) -> float:
    return _number(cfg, key, 0.0, 1.0, low_open=True)


def validate(cfg: DictConfig) -> None:
    """Raise `ConfigError` for the first invalid value in a composed run config."""
    source = _choice(cfg, "data.name", DATA_SOURCES)
    if source != "digits":
        path = cfg.data.path
        if not path:
            raise ConfigError(f"data.path is not set: pass data.path=... for data={source}")
        if not Path(path).exists():
            raise ConfigError(f"data.path {path!r} does not exist: pass an existing {'file' if source == 'npz' else 'directory'}")
    else:
        _number(cfg, "data.imbalance_ratio", 1.0, 1e6)
    if cfg.data.get("image_size") is not None:
        _number(cfg, "data.image_size", 4, 1024)
    if cfg.data.get("channels") not in (None, 1, 3):
        raise ConfigError(f"data.channels={cfg.data.channels!r} is not supported: use 1, 3 or null")
    names = cfg.data.get("class_names")
    if names is not None and (not OmegaConf.is_list(names) or len(names) == 0):
        raise ConfigError(f"data.class_names={names!r} is not a list: write 'data.class_names=[a,b]'")

    _choice(cfg, "model.name", MODELS)

    _validate_loss(cfg)

    _validate_resample(cfg)

    _validate_augment(cfg)

    _choice(cfg, "optim.name", OPTIMIZERS)
    _number(cfg, "optim.lr", 0.0, 10.0, low_open=True)
    _number(cfg, "optim.weight_decay", 0.0, 1.0)
    _choice(cfg, "optim.scheduler", SCHEDULERS)

    _number(cfg, "trainer.max_epochs", 1, 100_000)
    _number(cfg, "trainer.batch_size", 1, 1_000_000)
    device = str(cfg.trainer.device)
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"trainer.device={device!r} is not supported: use auto, cpu, cuda or cuda:N")


def _validate_loss(cfg: DictConfig) -> None:
    loss = _choice(cfg, "loss.name", LOSSES)
    if "label_smoothing" in cfg.loss:
        _number(cfg, "loss.label_smoothing", 0.0, 1.0)
        if cfg.loss.label_smoothing >= 1.0:
            raise ConfigError(f"loss.label_smoothing={cfg.loss.label_smoothing} must be below 1: use e.g. 0.1")
    if loss == "weighted_ce":
        _choice(cfg, "loss.weights", WEIGHT_SCHEMES)
    if loss == "focal":
        _choice(cfg, "loss.weights", ("none",) + WEIGHT_SCHEMES)
    if loss in ("focal", "class_balanced"):
        _number(cfg, "loss.gamma", 0.0, 10.0)
    if loss == "class_balanced":
        _choice(cfg, "loss.base", ("ce", "focal"))
    if loss in ("weighted_ce", "focal", "class_balanced"):
        _beta(cfg, "loss.beta")
    if loss == "ldam":
        _number(cfg, "loss.max_margin", 0.0, 10.0, low_open=True)
        _number(cfg, "loss.scale", 0.0, 1000.0, low_open=True)
        _beta(cfg, "loss.drw_beta")
        start = cfg.loss.drw_start_epoch
        if start is not None and (isinstance(start, bool) or not isinstance(start, int) or start < 0):
            raise ConfigError(f"loss.drw_start_epoch={start!r} is invalid: use an epoch number >= 0, or null to turn DRW off")
    if loss == "logit_adjusted":
        _number(cfg, "loss.tau", 0.0, 10.0)


def _validate_resample(cfg: DictConfig) -> None:
    resampler = _choice(cfg, "resample.name", RESAMPLERS)
    if "ratio" in cfg.resample:
        _ratio(cfg, "resample.ratio")
    if resampler == "hybrid":
        over = _ratio(cfg, "resample.over_ratio")
        under = _ratio(cfg, "resample.under_ratio")
        if under < over:
            raise ConfigError(
                f"resample.under_ratio={under} is below resample.over_ratio={over}: "
                "under-sampling can only raise the ratio, so set under_ratio >= over_ratio"
            )
    for key in ("k_neighbors", "m_neighbors", "enn_neighbors", "n_neighbors"):
        if key in cfg.resample:
            _number(cfg, f"resample.{key}", 1, 100)
    if resampler == "borderline_smote":
        _choice(cfg, "resample.kind", ("borderline-1", "borderline-2"))
    if resampler == "near_miss" and cfg.resample.version not in (1, 2, 3):
        raise ConfigError(f"resample.version={cfg.resample.version!r} is invalid: NearMiss has versions 1, 2 and 3")
    if resampler == "tomek_links":
        _choice(cfg, "resample.remove_from", ("not_minority", "all"))
    if resampler == "weighted_sampler":
        _number(cfg, "resample.power", 0.0, 1.0)


def _validate_augment(cfg: DictConfig) -> None:
    for key, high in AUGMENT_LIMITS.items():
        if key in cfg.augment:
            _number(cfg, f"augment.{key}", 0.0, high)
    _choice(cfg, "augment.padding_mode", PADDING_MODES)
    if "policy" in cfg.augment:
        _choice(cfg, "augment.policy", POLICIES)


def _beta(cfg: DictConfig, key: str) -> None:
    value = _number(cfg, key, 0.0, 1.0)
    if value >= 1.0:
        raise ConfigError(f"{key}={value} must be below 1: use e.g. 0.999")


def flatten(cfg: DictConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a config to `{"loss.name": "ce", ...}` with dotted keys, as logged to MLflow."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat
