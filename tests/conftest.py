"""Shared fixtures: composed configs that write MLflow and Optuna data only under tmp_path."""

from __future__ import annotations

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from imbalance_sweep.config import CONF_DIR, PROJECT_ROOT

# The project's test data sits beside the checkout; IMBALANCE_SWEEP_BREASTMNIST points elsewhere.
BREASTMNIST = Path(os.environ.get("IMBALANCE_SWEEP_BREASTMNIST", PROJECT_ROOT.parent / "shared" / "data" / "breastmnist.npz"))


def tracking_overrides(tmp_path: Path) -> list[str]:
    """Point MLflow at a fresh SQLite store and artifact folder inside tmp_path."""
    return [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/artifacts"]


@pytest.fixture
def hydra_context():
    """Initialise Hydra on the project's conf/ so `compose` and `run_sweep` work as in the entry points."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        yield


@pytest.fixture
def make_cfg(hydra_context, tmp_path):
    """Compose `train.yaml` with overrides, tracking into tmp_path and short CPU training."""

    def _make(*overrides: str, config_name: str = "train") -> DictConfig:
        base = ["trainer.max_epochs=1", "trainer.device=cpu", *tracking_overrides(tmp_path)]
        return compose(config_name=config_name, overrides=[*base, *overrides])

    return _make


@pytest.fixture
def breastmnist_path() -> Path:
    if not BREASTMNIST.exists():
        pytest.skip(f"{BREASTMNIST} not found: put shared/data beside the checkout or set IMBALANCE_SWEEP_BREASTMNIST")
    return BREASTMNIST
