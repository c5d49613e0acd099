"""Trials per hour with 1 and with N worker processes on this machine, measured side by side.

Runs the same sweep (same search space, trial budget and data) once with `sweep.n_workers=1` and once
with `sweep.n_workers=N`, each into a fresh study and MLflow store in a temporary folder, and prints
both throughputs and their ratio. Timing covers the whole `run_sweep` call, so both runs include
the study setup and one retrain of the best trial on top of the trials.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from hydra import initialize_config_dir
from omegaconf import OmegaConf

from imbalance_sweep.config import CONF_DIR
from imbalance_sweep.study_setup import SweepConfig
from imbalance_sweep.sweep import run_sweep


def measure(n_workers: int, n_trials: int, epochs: int, folder: Path) -> float:
    """Return trials per hour for one sweep of `n_trials` trials with `n_workers` processes."""
    settings = OmegaConf.merge(
        OmegaConf.structured(SweepConfig),
        {
            "n_trials": n_trials,
            "n_workers": n_workers,
            "pruner": "none",
            "storage": str(folder / "optuna.journal"),
            "params": {"augment.rotation": "interval(0, 15)", "loss": "choice(ce, weighted_ce, focal)"},
        },
    )
    overrides = [
        f"trainer.max_epochs={epochs}", "trainer.device=cpu",
        f"tracking.uri=sqlite:///{folder}/mlflow.db", f"tracking.artifact_root={folder}/artifacts",
    ]
    started = time.monotonic()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        run_sweep(settings, "bench", overrides)
    return n_trials / (time.monotonic() - started) * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the parallel run")
    parser.add_argument("--trials", type=int, default=30, help="trials per sweep")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial")
    arguments = parser.parse_args()

    results = {}
    for n_workers in (1, arguments.workers):
        with tempfile.TemporaryDirectory() as folder:
            results[n_workers] = measure(n_workers, arguments.trials, arguments.epochs, Path(folder))
        print(f"{n_workers} worker(s): {results[n_workers]:.0f} trials per hour")
    print(f"ratio {arguments.workers} workers / 1 worker: {results[arguments.workers] / results[1]:.2f} "
          f"({os.cpu_count()} CPU cores, {arguments.trials} trials of {arguments.epochs} epochs each)")


if __name__ == "__main__":
    main()
