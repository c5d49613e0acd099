"""Sweeps end to end: the Optuna study and the MLflow parent and child runs it leaves behind."""

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
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import OmegaConf

from imbalance_sweep.config import PROJECT_ROOT
from imbalance_sweep.sweep import SweepConfig, run_sweep

from conftest import tracking_overrides

DIGITS = [str(c) for c in range(10)]


def sweep_settings(tmp_path: Path, **values) -> OmegaConf:
    settings = OmegaConf.merge(OmegaConf.structured(SweepConfig), {"storage": f"sqlite:///{tmp_path}/optuna.db", "pruner": "none"})
    return OmegaConf.merge(settings, values)


def runs_by_role(tracking_uri: str) -> tuple[list, list]:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("imbalance-sweep")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags]
    return parents, children


BASE = ["trainer.max_epochs=2", "trainer.device=cpu"]


def test_two_trial_sweep_mlflow_layout(hydra_context, tmp_path):
    params = {"loss": "choice(ce, focal)", "loss.gamma": "interval(0.5, 3.0)", "augment.rotation": "interval(0, 15)"}
    settings = sweep_settings(tmp_path, n_trials=2, params=params)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    outcome = run_sweep(settings, "test", [*BASE, *tracking_overrides(tmp_path)])

    parents, children = runs_by_role(uri)
    assert len(parents) == 1
    assert len(children) == 2
    parent = parents[0]
    assert parent.info.run_id == outcome.parent_run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["study_name"] == outcome.study.study_name
    assert json.loads(parent.data.tags["search_space"]) == params
    assert parent.data.tags["best_trial"] == str(outcome.best.number)

    for child in children:
        assert child.data.tags[MLFLOW_PARENT_RUN_ID] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.tags["trial_state"] == "COMPLETE"
        for kind in ("precision", "recall", "f1"):
            assert {f"val/{kind}/{name}" for name in DIGITS} <= set(child.data.metrics)
        assert not any(key.startswith("test/") for key in child.data.metrics)
    assert sorted(c.data.tags["trial_number"] for c in children) == ["0", "1"]

    # The parent contains the best configuration retrained (same seed, same numbers) and its test scores.
    assert parent.data.metrics["val/macro_f1"] == pytest.approx(outcome.best.value)
    for kind in ("precision", "recall", "f1"):
        assert {f"test/{kind}/{name}" for name in DIGITS} <= set(parent.data.metrics)

    client = MlflowClient(uri)
    for run in [parent, *children]:
        top = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "class_counts.json", "val"} <= top
        val = {a.path for a in client.list_artifacts(run.info.run_id, "val")}
        assert {"val/confusion_matrix.png", "val/confusion_matrix.json", "val/classification_report.json"} <= val
    assert "test" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    assert "Best trial" in outcome.summary
    assert "test R" in outcome.summary


def test_conditional_keys_sampled_only_when_present(hydra_context, tmp_path):
    params = {"loss": "choice(ce, focal)", "loss.gamma": "interval(0.5, 3.0)"}
    settings = sweep_settings(tmp_path, n_trials=6, params=params)
    outcome = run_sweep(settings, "test", ["trainer.max_epochs=1", "trainer.device=cpu", *tracking_overrides(tmp_path)])
    trials = outcome.study.get_trials()
    assert {t.params["loss"] for t in trials} == {"ce", "focal"}
    for trial in trials:
        assert ("loss.gamma" in trial.params) == (trial.params["loss"] == "focal")


def test_rerun_resumes_study(hydra_context, tmp_path):
    overrides = ["trainer.max_epochs=1", "trainer.device=cpu", *tracking_overrides(tmp_path)]
    params = {"augment.rotation": "interval(0, 15)"}
    first = run_sweep(sweep_settings(tmp_path, n_trials=2, params=params), "test", overrides)
    second = run_sweep(sweep_settings(tmp_path, n_trials=3, params=params), "test", overrides)

    assert second.study.study_name == first.study.study_name
    assert [t.number for t in second.study.get_trials()] == [0, 1, 2]
    assert second.parent_run_id == first.parent_run_id
    parents, children = runs_by_role(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(parents) == 1
    assert len(children) == 3
    assert parents[0].info.status == "FINISHED"


def test_failing_trial_does_not_stop_sweep(hydra_context, tmp_path):
    # optim.lr=50 fails validation inside the trial; the sweep records FAIL and goes on.
    params = {"optim.lr": "choice(0.003, 50.0)"}
    settings = sweep_settings(tmp_path, n_trials=6, params=params, n_startup_trials=6)
    outcome = run_sweep(settings, "test", ["trainer.max_epochs=1", "trainer.device=cpu", *tracking_overrides(tmp_path)])
    trials = outcome.study.get_trials()
    assert len(trials) == 6
    states = {t.number: t.state for t in trials}
    for trial in trials:
        expected = optuna.trial.TrialState.FAIL if trial.params["optim.lr"] == 50.0 else optuna.trial.TrialState.COMPLETE
        assert trial.state == expected
    assert len(set(states.values())) == 2  # the seed gives both outcomes

    _, children = runs_by_role(f"sqlite:///{tmp_path}/mlflow.db")
    failed = [c for c in children if c.data.tags["trial_state"] == "FAIL"]
    assert failed
    assert all(c.info.status == "FAILED" for c in failed)
    assert all("optim.lr" in c.data.tags["error"] for c in failed)


def test_test_metric_rejected_as_objective(hydra_context, tmp_path):
    from imbalance_sweep.errors import ConfigError

    with pytest.raises(ConfigError):
        run_sweep(sweep_settings(tmp_path, metric="test/macro_f1"), "test", tracking_overrides(tmp_path))


# ---- whole commands, as a user runs them -------------------------------------------------------

def command_env() -> dict:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HYDRA_FULL_ERROR": "0"}


def cli(module: str, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *arguments], cwd=cwd, env=command_env(), capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_breastmnist_sweep_command(tmp_path, breastmnist_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = cli(
        "imbalance_sweep.sweep", "data=npz", f"data.path={breastmnist_path}", "data.class_names=[malignant,benign_or_normal]",
        "sweep.n_trials=5", "trainer.max_epochs=3", f"sweep.storage=sqlite:///{tmp_path}/optuna.db",
        f"tracking.uri={uri}", f"tracking.artifact_root={tmp_path}/artifacts", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "malignant" in result.stdout
    parents, children = runs_by_role(uri)
    assert len(parents) == 1
    assert len(children) == 5
    assert "test/recall/malignant" in parents[0].data.metrics
    assert "val/recall/malignant" in children[0].data.metrics


@pytest.mark.slow
def test_hydra_multirun_one_run_per_job(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = cli(
        "imbalance_sweep.train", "-m", "loss=ce,weighted_ce,focal", "resample=none,smote", "trainer.max_epochs=1",
        f"tracking.uri={uri}", f"tracking.artifact_root={tmp_path}/artifacts", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("imbalance-sweep").experiment_id])
    assert len(runs) == 6
    assert {r.info.status for r in runs} == {"FINISHED"}
    pairs = {(r.data.params["loss.name"], r.data.params["resample.name"]) for r in runs}
    assert pairs == {(loss, resample) for loss in ("ce", "weighted_ce", "focal") for resample in ("none", "smote")}


@pytest.mark.slow
def test_sigint_kills_runs_and_resume_finishes(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    arguments = [
        "sweep.n_trials=4", "trainer.max_epochs=30", f"sweep.storage=sqlite:///{tmp_path}/optuna.db",
        f"tracking.uri={uri}", f"tracking.artifact_root={tmp_path}/artifacts",
    ]
    # Output goes to files: an unread pipe could fill up while the test waits and block the sweep.
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "imbalance_sweep.sweep", *arguments], cwd=tmp_path, env=command_env(),
            stdout=stdout, stderr=stderr_file,
        )
    # Read the stores only after the sweep has created them: two processes creating the same
    # SQLite schema at once make MLflow's migration fail.
    assert wait_for_log(stdout_path, "trials done", process), stderr_path.read_text()[-3000:]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and _child_count(uri) < 1:  # wait until the first trial's child run exists
        time.sleep(1)
    assert process.poll() is None, stderr_path.read_text()[-3000:]
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    stderr = stderr_path.read_text()

    assert process.returncode == 130, stderr[-3000:]
    assert "rerun the same command" in stderr
    assert "Traceback" not in stderr
    parents, children = runs_by_role(uri)
    assert parents[0].info.status == "KILLED"
    assert "RUNNING" not in {r.info.status for r in [*parents, *children]}
    assert "KILLED" in {c.info.status for c in children}

    # Same study (the name ignores sweep settings), now asked to stop at 2 finished trials.
    resumed = cli("imbalance_sweep.sweep", *[a.replace("sweep.n_trials=4", "sweep.n_trials=2") for a in arguments], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    parents, children = runs_by_role(uri)
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    assert "RUNNING" not in {r.info.status for r in children}
    study = optuna.load_study(study_name=parents[0].data.tags["study_name"], storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 2
    assert study.trials[0].state == optuna.trial.TrialState.FAIL  # the interrupted trial, counted as finished


def wait_for_log(path: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> bool:
    """Wait until a running command has written `text` to its log file; False if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and text in path.read_text():
            return True
        time.sleep(0.5)
    return False


def _child_count(uri: str) -> int:
    try:
        return len(runs_by_role(uri)[1])
    except Exception:  # the store may not have its tables yet
        return 0


def _all_options(group: str) -> str:
    return ",".join(sorted(p.stem for p in (PROJECT_ROOT / "conf" / group).glob("*.yaml")))


@pytest.mark.slow
@pytest.mark.parametrize("group", ["loss", "resample"])
def test_multirun_every_option_finishes(tmp_path, group):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    options = _all_options(group)
    result = cli(
        "imbalance_sweep.train", "-m", f"{group}={options}", "trainer.max_epochs=1", "trainer.evaluate_test=false",
        f"tracking.uri={uri}", f"tracking.artifact_root={tmp_path}/artifacts", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("imbalance-sweep").experiment_id], max_results=100)
    assert sorted(r.data.params[f"{group}.name"] for r in runs) == sorted(options.split(","))
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.parametrize("sweep_name", ["default", "catalogue"])
def test_sweep_file_reaches_every_option(hydra_context, tmp_path, sweep_name):
    """Sample many trials of a shipped sweep file and validate each composed config, without training."""
    from hydra import compose

    from imbalance_sweep.config import validate
    from imbalance_sweep.search_space import parse_search_space
    from imbalance_sweep.workers import sample_config as _sample_config

    settings = compose(config_name="study", overrides=[f"sweep={sweep_name}"]).sweep
    space = parse_search_space(settings.params)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"loss": set(), "resample": set()}
    for _ in range(80):
        trial = study.ask()
        cfg, overrides = _sample_config(trial, space, tracking_overrides(tmp_path))
        validate(cfg)
        for group in seen:
            seen[group].add(cfg[group].name)
        study.tell(trial, 0.0)
    for group, names in seen.items():
        choices = next(p for p in space.parameters if p.key == group).distribution.choices
        assert names == set(choices)


def test_misspelled_sweep_key_rejected(hydra_context, tmp_path):
    from imbalance_sweep.errors import ConfigError

    settings = sweep_settings(tmp_path, params={"augment.rotaton": "interval(0, 20)"})
    with pytest.raises(ConfigError) as error:
        run_sweep(settings, "test", tracking_overrides(tmp_path))
    assert "augment.rotaton" in str(error.value)


def test_conditional_key_accepted_when_some_option_has_it(hydra_context, tmp_path):
    from imbalance_sweep.sweep import _check_space_keys
    from imbalance_sweep.workers import compose_run_config as _compose
    from imbalance_sweep.search_space import parse_search_space

    space = parse_search_space({"loss": "choice(ce, focal)", "loss.gamma": "interval(0, 2)"})
    _check_space_keys(space, [], _compose([]))  # loss.gamma exists in loss=focal: no error


def test_study_name_follows_search_space(hydra_context):
    from imbalance_sweep.sweep import default_study_name
    from imbalance_sweep.workers import compose_run_config as _compose
    from imbalance_sweep.search_space import parse_search_space

    base = _compose([])
    first = default_study_name("s", base, parse_search_space({"augment.rotation": "interval(0, 10)"}))
    second = default_study_name("s", base, parse_search_space({"augment.rotation": "interval(0, 20)"}))
    again = default_study_name("s", base, parse_search_space({"augment.rotation": "interval(0, 10)"}))
    assert first != second
    assert first == again


def test_resume_samples_new_values(hydra_context, tmp_path):
    overrides = ["trainer.max_epochs=1", "trainer.device=cpu", *tracking_overrides(tmp_path)]
    params = {"augment.rotation": "interval(0, 15)"}
    run_sweep(sweep_settings(tmp_path, n_trials=2, params=params), "test", overrides)
    outcome = run_sweep(sweep_settings(tmp_path, n_trials=4, params=params), "test", overrides)
    values = [t.params["augment.rotation"] for t in outcome.study.get_trials()]
    assert len(set(values)) == 4


def test_finished_sweep_not_scored_again(hydra_context, tmp_path):
    overrides = ["trainer.max_epochs=2", "trainer.device=cpu", *tracking_overrides(tmp_path)]
    params = {"augment.rotation": "interval(0, 15)"}
    first = run_sweep(sweep_settings(tmp_path, n_trials=1, params=params), "test", overrides)
    second = run_sweep(sweep_settings(tmp_path, n_trials=1, params=params), "test", overrides)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(client.get_metric_history(first.parent_run_id, "test/macro_f1")) == 1
    assert second.final_metrics["test/macro_f1"] == pytest.approx(first.final_metrics["test/macro_f1"])
    assert "test R" in second.summary


def test_broken_sweep_file_skipped(tmp_path):
    from imbalance_sweep.sweep import SWEEP_FILE_ERRORS, register_sweep_files

    (tmp_path / "good_one.yaml").write_text("n_trials: 3\nparams:\n  seed: 1\n")
    (tmp_path / "bad_one.yaml").write_text("n_trail: 3\n")
    assert register_sweep_files(tmp_path) == ["good_one"]
    assert "n_trail" in SWEEP_FILE_ERRORS.pop("bad_one")
