"""Every MLflow call of the project, through `MlflowClient` with explicit run ids.

Explicit run ids (instead of MLflow's fluent, process-global active run) let a sweep keep its parent
run open while trials open and close nested child runs. They also let every exit path close its run
with the right status: FINISHED, FAILED (with the error text as a tag) or KILLED on Ctrl-C.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # sweeps run headless; never open a window

import matplotlib.pyplot as plt
import numpy as np
import optuna
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import DictConfig

log = logging.getLogger(__name__)

_BATCH_LIMIT = 100  # MLflow accepts at most 100 params or tags per log_batch call
_MAX_PARAM_LENGTH = 6000
_MAX_TAG_LENGTH = 5000


def _local_sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


class Tracker:
    """One MLflow tracking store and experiment."""

    def __init__(self, cfg: DictConfig) -> None:
        self.uri = str(cfg.uri)
        database = _local_sqlite_path(self.uri)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        artifact_location = None
        if database is not None and cfg.get("artifact_root"):
            artifact_location = Path(cfg.artifact_root).resolve().as_uri()
        self.experiment_id = self._experiment_id(str(cfg.experiment), artifact_location)

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            # Another worker created it between our look-up and create call.
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def start_run(self, run_name: str, tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> TrackedRun:
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        return TrackedRun(self.client, run.info.run_id)

    def resume_run(self, run_id: str) -> TrackedRun:
        """Reopen a finished or killed run (a resumed sweep's parent) and mark it RUNNING."""
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return TrackedRun(self.client, run_id)

    def run_status(self, run_id: str) -> str | None:
        try:
            return self.client.get_run(run_id).info.status
        except MlflowException:
            return None

    def run_exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True


class TrackedRun:
    """An open MLflow run. As a context manager it closes the run with a status that fits the exit."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(key, str(value)[:_MAX_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(items), _BATCH_LIMIT):
            self.client.log_batch(self.run_id, params=items[start : start + _BATCH_LIMIT])

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = [RunTag(key, str(value)[:_MAX_TAG_LENGTH]) for key, value in tags.items()]
        for start in range(0, len(items), _BATCH_LIMIT):
            self.client.log_batch(self.run_id, tags=items[start : start + _BATCH_LIMIT])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        items = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        for start in range(0, len(items), 1000):  # MLflow's per-call metric limit
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def log_dict(self, data: dict | list, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_confusion_matrix(self, confusion: np.ndarray, class_names: list[str], stage: str) -> None:
        """Log `<stage>/confusion_matrix.json` (rows: true class, columns: predicted) and a PNG of it."""
        self.log_dict(
            {"labels": class_names, "rows": "true class", "columns": "predicted class", "matrix": confusion.tolist()},
            f"{stage}/confusion_matrix.json",
        )
        size = max(4.0, 0.5 * len(class_names) + 2)
        figure, axes = plt.subplots(figsize=(size, size))
        axes.imshow(confusion, cmap="Blues")
        ticks = range(len(class_names))
        axes.set_xticks(ticks, class_names, rotation=45, ha="right")
        axes.set_yticks(ticks, class_names)
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        axes.set_title(f"{stage} confusion matrix")
        threshold = confusion.max() / 2 if confusion.size else 0
        for row in ticks:
            for column in ticks:
                value = confusion[row, column]
                axes.text(column, row, str(value), ha="center", va="center", color="white" if value > threshold else "black")
        figure.tight_layout()
        self.client.log_figure(self.run_id, figure, f"{stage}/confusion_matrix.png")
        plt.close(figure)

    def get_tag(self, key: str) -> str | None:
        return self.client.get_run(self.run_id).data.tags.get(key)

    def latest_metrics(self) -> dict[str, float]:
        """Return the last logged value of every metric of the run."""
        return dict(self.client.get_run(self.run_id).data.metrics)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None or issubclass(exc_type, optuna.TrialPruned):
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            try:
                self.set_tags({"error": f"{exc_type.__name__}: {exc}"})
            finally:
                self.end("FAILED")
        return False
