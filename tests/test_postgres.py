"""Distributed sweeps against a real PostgreSQL server, as several machines would share one.

`.ci/run` starts a throwaway server on 127.0.0.1 and sets IMBALANCE_SWEEP_TEST_POSTGRES_URL (and
..._MLFLOW_URL for a second database). Without them these tests are skipped with a message.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from imbalance_sweep.study_setup import SweepConfig
from imbalance_sweep.sweep import run_sweep

from conftest import tracking_overrides
from test_sweep import command_env, runs_by_role

POSTGRES_URL = os.environ.get("IMBALANCE_SWEEP_TEST_POSTGRES_URL")
MLFLOW_DATABASE_URL = os.environ.get("IMBALANCE_SWEEP_TEST_POSTGRES_MLFLOW_URL")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.skipif(
        not POSTGRES_URL,
        reason="no PostgreSQL server: set IMBALANCE_SWEEP_TEST_POSTGRES_URL (.ci/run starts one on 127.0.0.1)",
    ),
]


def postgres_settings(**values):
    study_name = f"pg-{uuid.uuid4().hex[:8]}"  # the server outlives one test; names must not collide
    base = OmegaConf.merge(OmegaConf.structured(SweepConfig), {"storage": POSTGRES_URL, "pruner": "none", "study_name": study_name})
    return OmegaConf.merge(base, values)


def test_three_workers_share_postgres_study(hydra_context, tmp_path):
    settings = postgres_settings(n_trials=6, n_workers=3, params={"augment.rotation": "interval(0, 15)"})
    outcome = run_sweep(settings, "test", ["trainer.max_epochs=1", "trainer.device=cpu", *tracking_overrides(tmp_path)])

    study = optuna.load_study(study_name=settings.study_name, storage=POSTGRES_URL)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    _, children = runs_by_role(f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(int(c.data.tags["trial_number"]) for c in children) == list(range(6))
    assert 1 <= len({c.data.tags["worker"] for c in children}) <= 3  # a worker that starts late may find no trial left
    assert outcome.best is not None


def test_worker_command_joins_study(hydra_context, tmp_path):
    settings = postgres_settings(n_trials=2, params={"augment.rotation": "interval(0, 15)"})
    overrides = ["trainer.max_epochs=1", "trainer.device=cpu", *tracking_overrides(tmp_path)]
    run_sweep(settings, "test", overrides)  # creates the study and runs its first 2 trials

    worker = subprocess.run(
        [sys.executable, "-m", "imbalance_sweep.worker", f"sweep.study_name={settings.study_name}", f"sweep.storage={POSTGRES_URL}", "sweep.n_trials=4"],
        cwd=tmp_path, env=command_env(), capture_output=True, text=True, timeout=600,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    study = optuna.load_study(study_name=settings.study_name, storage=POSTGRES_URL)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    parents, children = runs_by_role(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(parents) == 1
    assert len(children) == 4


@pytest.mark.skipif(not MLFLOW_DATABASE_URL, reason="no second PostgreSQL database for the MLflow server")
def test_sweep_logs_to_mlflow_server_on_postgres(hydra_context, tmp_path):
    port = _free_port()
    log_path = tmp_path / "mlflow-server.log"
    log_file = log_path.open("w")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", MLFLOW_DATABASE_URL,
            "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1",
        ],
        cwd=tmp_path, env=command_env(), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(f"{uri}/health", server, log_path)
        settings = postgres_settings(n_trials=2, params={"augment.rotation": "interval(0, 15)"})
        experiment = f"server-{settings.study_name}"
        run_sweep(settings, "test", ["trainer.max_epochs=1", "trainer.device=cpu", f"tracking.uri={uri}", f"tracking.experiment={experiment}"])

        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(parents) == 1
        assert len(children) == 2
        assert "test/macro_f1" in parents[0].data.metrics
        assert {a.path for a in client.list_artifacts(children[0].info.run_id)} >= {"config.yaml", "class_counts.json"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log_file.close()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_server(url: str, server: subprocess.Popen, log_path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"mlflow server did not answer {url} within {timeout} s")
