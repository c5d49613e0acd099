"""Sweep engine: pruners, samplers, multi-objective studies, faults, resume and parallel workers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from imbalance_sweep.errors import ConfigError
from imbalance_sweep.search_space import parse_search_space
from imbalance_sweep.study_setup import SweepConfig, grid_search_space, make_pruner, make_sampler, parse_objectives
from imbalance_sweep.sweep import run_sweep

from conftest import tracking_overrides
from test_sweep import command_env, runs_by_role, wait_for_log

FAST = ["trainer.max_epochs=1", "trainer.device=cpu"]


def settings_for(tmp_path: Path, **values):
    base = OmegaConf.merge(OmegaConf.structured(SweepConfig), {"storage": f"sqlite:///{tmp_path}/optuna.db", "pruner": "none"})
    return OmegaConf.merge(base, values)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
        ("grid", optuna.samplers.GridSampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
        ("qmc", optuna.samplers.QMCSampler),
    ],
)
def test_sampler_names(tmp_path, name, expected):
    space = parse_search_space({"loss": "choice(ce, focal)", "trainer.batch_size": "range(32, 97, 32)"})
    assert isinstance(make_sampler(settings_for(tmp_path, sampler=name), space, seed=0), expected)


def test_grid_needs_finite_values(tmp_path):
    space = parse_search_space({"augment.rotation": "interval(0, 10)"})
    with pytest.raises(ConfigError):
        make_sampler(settings_for(tmp_path, sampler="grid"), space, seed=0)


def test_grid_values_from_choice_and_range():
    space = parse_search_space({"loss": "choice(ce, focal)", "trainer.batch_size": "range(32, 97, 32)", "augment.zoom": "range(0.0, 0.3, 0.1)"})
    assert grid_search_space(space) == {"loss": ["ce", "focal"], "trainer.batch_size": [32, 64, 96], "augment.zoom": [0.0, 0.1, 0.2]}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("none", optuna.pruners.NopPruner),
        ("median", optuna.pruners.MedianPruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
    ],
)
def test_pruner_names(tmp_path, name, expected):
    objectives = parse_objectives(settings_for(tmp_path))
    assert isinstance(make_pruner(settings_for(tmp_path, pruner=name), objectives, max_epochs=10), expected)


def test_multi_objective_turns_pruning_off(tmp_path, caplog):
    settings = settings_for(tmp_path, pruner="median", metric=["val/macro_f1", "val/recall/9"])
    pruner = make_pruner(settings, parse_objectives(settings), max_epochs=10)
    assert isinstance(pruner, optuna.pruners.NopPruner)
    assert "multi-objective" in caplog.text


@pytest.mark.parametrize(
    ("values", "message_names"),
    [
        ({"metric": "test/macro_f1"}, "test/macro_f1"),
        ({"metric": ["val/macro_f1", "val/loss"], "direction": ["maximize"] * 3}, "sweep.direction"),
        ({"direction": "up"}, "up"),
    ],
)
def test_objectives_rejected(tmp_path, values, message_names):
    with pytest.raises(ConfigError) as error:
        parse_objectives(settings_for(tmp_path, **values))
    assert message_names in str(error.value)


@pytest.mark.parametrize("sampler", ["random", "grid", "cmaes", "qmc", "nsga2"])
def test_sweep_runs_with_sampler(hydra_context, tmp_path, sampler):
    params = {"loss": "choice(ce, focal)", "augment.zoom": "range(0.0, 0.2, 0.1)"}
    outcome = run_sweep(settings_for(tmp_path, sampler=sampler, n_trials=2, params=params), "test", [*FAST, *tracking_overrides(tmp_path)])
    assert len(outcome.study.get_trials(states=(TrialState.COMPLETE,))) == 2


def test_clearly_worse_trial_pruned(hydra_context, tmp_path):
    params = {"optim.lr": "choice(0.003, 1e-07)"}
    settings = settings_for(tmp_path, n_trials=3, params=params, pruner="median", n_startup_trials=2, pruner_warmup_epochs=1, study_name="prune")
    study = optuna.create_study(study_name="prune", storage=settings.storage, direction="maximize")
    for lr in (0.003, 0.003, 1e-07):  # two good trials set the median; the third learns nothing
        study.enqueue_trial({"optim.lr": lr})
    outcome = run_sweep(settings, "test", ["trainer.max_epochs=6", "trainer.device=cpu", *tracking_overrides(tmp_path)])

    trials = outcome.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    _, children = runs_by_role(f"sqlite:///{tmp_path}/mlflow.db")
    pruned = [c for c in children if c.data.tags["trial_number"] == "2"][0]
    assert pruned.data.tags["trial_state"] == "PRUNED"
    assert pruned.info.status == "FINISHED"
    history = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(pruned.info.run_id, "val/macro_f1")
    assert 2 <= len(history) < 6  # its curve up to the epoch it was pruned at


def test_multi_objective_pareto_front(hydra_context, tmp_path):
    params = {"loss": "choice(ce, weighted_ce)", "augment.rotation": "interval(0, 15)"}
    settings = settings_for(tmp_path, n_trials=4, params=params, metric=["val/macro_f1", "val/recall/9"], direction="maximize", pruner="median")
    outcome = run_sweep(settings, "test", [*FAST, *tracking_overrides(tmp_path)])

    front = {t.number for t in outcome.study.best_trials}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parents, _ = runs_by_role(f"sqlite:///{tmp_path}/mlflow.db")
    parent = parents[0]
    path = client.download_artifacts(parent.info.run_id, "pareto_front.json", str(tmp_path / "dl"))
    stored = json.loads(Path(path).read_text())
    assert {entry["number"] for entry in stored} == front
    assert all(len(entry["values"]) == 2 for entry in stored)
    assert parent.data.tags["pareto_front"] == ",".join(str(n) for n in sorted(front))
    assert outcome.best.number in front
    assert "test/recall/9" in parent.data.metrics
    assert "Pareto front" in outcome.summary


def test_max_failures_stops_sweep(hydra_context, tmp_path):
    params = {"optim.lr": "choice(50.0)"}  # invalid in every trial
    settings = settings_for(tmp_path, n_trials=10, params=params, max_failures=2)
    outcome = run_sweep(settings, "test", [*FAST, *tracking_overrides(tmp_path)])
    assert [t.state for t in outcome.study.get_trials()] == [TrialState.FAIL, TrialState.FAIL]
    assert outcome.best is None


def test_sqlite_rejected_for_parallel_workers(hydra_context, tmp_path):
    with pytest.raises(ConfigError) as error:
        run_sweep(settings_for(tmp_path, n_workers=2), "test", [*FAST, *tracking_overrides(tmp_path)])
    assert "journal" in str(error.value)


@pytest.mark.slow
def test_two_workers_on_journal_storage(hydra_context, tmp_path):
    params = {"augment.rotation": "interval(0, 15)"}
    settings = settings_for(tmp_path, n_trials=6, n_workers=2, storage=str(tmp_path / "optuna.journal"), params=params)
    outcome = run_sweep(settings, "test", ["trainer.max_epochs=2", "trainer.device=cpu", *tracking_overrides(tmp_path)])
    trials = outcome.study.get_trials()
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    parents, children = runs_by_role(f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(int(c.data.tags["trial_number"]) for c in children) == list(range(6))
    assert all(c.data.tags["worker"] for c in children)
    assert 1 <= len({c.data.tags["worker"] for c in children}) <= 2  # a worker that starts late may find no trial left
    assert {r.info.status for r in [*parents, *children]} == {"FINISHED"}


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def _trials(storage: str, states: tuple) -> list:
    try:
        summaries = optuna.get_all_study_summaries(storage)
        if not summaries:
            return []
        study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
        return study.get_trials(states=states)
    except Exception:  # the storage has no tables yet
        return []


def _finished_trials(storage: str) -> int:
    return len(_trials(storage, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))


@pytest.mark.slow
def test_sigkill_then_rerun_finishes(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    arguments = [
        sys.executable, "-m", "imbalance_sweep.sweep", "sweep.n_trials=6", "sweep.pruner=none", "trainer.max_epochs=30",
        f"sweep.storage={storage}", "sweep.heartbeat_interval=1", "sweep.grace_period=3",
        f"tracking.uri={uri}", f"tracking.artifact_root={tmp_path}/artifacts",
    ]
    log_path = tmp_path / "sweep.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(arguments, cwd=tmp_path, env=command_env(), stdout=log_file, stderr=subprocess.STDOUT)
    # Poll the stores only once the sweep has created them (concurrent schema creation fails).
    assert wait_for_log(log_path, "trials done", process), log_path.read_text()[-3000:]
    assert _wait_for(lambda: _finished_trials(storage) >= 2, timeout=300)
    assert _wait_for(lambda: len(_trials(storage, (TrialState.RUNNING,))) == 1, timeout=60)
    time.sleep(1)  # inside the third trial (30 epochs take several seconds), whose MLflow run now exists
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(4)  # past the grace period, so the next start marks the dead trial as stale

    rerun = subprocess.run(arguments, cwd=tmp_path, env=command_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = _trials(storage, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING))
    assert len(trials) == 6
    assert [t.state for t in trials].count(TrialState.FAIL) == 1  # the killed trial, counted as finished
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 5  # including its retry
    parents, children = runs_by_role(uri)
    assert "RUNNING" not in {r.info.status for r in [*parents, *children]}
    assert "KILLED" in {c.info.status for c in children}
    assert parents[0].info.status == "FINISHED"


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"n_trials": 0}, "sweep.n_trials"),
        ({"n_workers": -1}, "sweep.n_workers"),
        ({"sampler": "bayes"}, "bayes"),
        ({"pruner": "early"}, "early"),
        ({"sampler": "grid", "params": {"augment.rotation": "interval(0, 10)"}}, "augment.rotation"),
    ],
)
def test_invalid_settings_rejected_before_start(hydra_context, tmp_path, values, named):
    with pytest.raises(ConfigError) as error:
        run_sweep(settings_for(tmp_path, **values), "test", [*FAST, *tracking_overrides(tmp_path)])
    assert named in str(error.value)
    assert not (tmp_path / "optuna.db").exists()  # nothing was created
