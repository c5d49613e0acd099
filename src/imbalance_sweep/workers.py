"""The trial loop that every worker runs: in the sweep process, in spawned processes, or on other machines.

A worker loads an existing study, reads from its user attributes what every trial inherits (the
base overrides, the search space, the objectives, the MLflow parent run), and runs trials until the
study contains `n_trials` finished trials. Workers share nothing but the Optuna storage and the MLflow
tracking store, so any number of them can join from anywhere that reaches both.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import warnings
from dataclasses import dataclass
from typing import Any

import hydra
import optuna
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from imbalance_sweep.cli import raise_keyboard_interrupt
from imbalance_sweep.config import CONF_DIR, has_key
from imbalance_sweep.errors import ConfigError
from imbalance_sweep.search_space import SearchSpace, override_for, parse_search_space, suggest
from imbalance_sweep.study_setup import Objectives, make_pruner, make_sampler, open_storage
from imbalance_sweep.tracking import Tracker
from imbalance_sweep.train import run

log = logging.getLogger(__name__)

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
SPEC_ATTR = "imbalance_sweep"  # study user attribute that describes the sweep to every worker


@dataclass
class SweepSpec:
    """The settings every trial of a study inherits, stored in the study so that workers can join it."""

    sweep_name: str
    base_overrides: list[str]
    params: dict[str, Any]
    metrics: list[str]
    directions: list[str]
    parent_run_id: str

    @classmethod
    def from_study(cls, study: optuna.Study) -> SweepSpec:
        stored = study.user_attrs.get(SPEC_ATTR)
        if stored is None:
            raise ConfigError(
                f"study {study.study_name!r} was not created by imbalance_sweep.sweep: start it with "
                "`python -m imbalance_sweep.sweep` first, then let workers join"
            )
        return cls(**stored)

    @property
    def objectives(self) -> Objectives:
        return Objectives(tuple(self.metrics), tuple(self.directions))


class _QuietTrialFailures(logging.Filter):
    """Trim Optuna's "Trial N failed" log records: none for Ctrl-C, no traceback for a `ConfigError`.

    The sweep prints its own one-line message on Ctrl-C, and a config error is one line by design.
    Other errors keep their traceback, which is what one needs to debug a NaN or a crash.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, KeyboardInterrupt):
            return False
        if isinstance(error, ConfigError):
            record.exc_info, record.exc_text = None, None
        return True


# Optuna logs failed trials from this module's logger (optuna/study/_optimize.py in Optuna 5.1).
logging.getLogger("optuna.study._optimize").addFilter(_QuietTrialFailures())


def compose_run_config(overrides: list[str]) -> DictConfig:
    """Compose `train.yaml` with overrides; needs an initialised Hydra."""
    try:
        return compose(config_name="train", overrides=list(overrides))
    except hydra.errors.HydraException as error:
        raise ConfigError(f"cannot compose the run config: {str(error).splitlines()[0]}") from None


def sample_config(trial: optuna.Trial, space: SearchSpace, base_overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """Sample group choices, then only the keys that exist in the config those choices compose.

    A key that the chosen options lack (`loss.gamma` when `loss=ce`) is not sampled at all, which
    makes the Optuna search space conditional.
    """
    sampled: list[str] = []
    for parameter in (p for p in space.parameters if p.is_group):
        sampled.append(override_for(parameter.key, suggest(trial, parameter)))
    cfg = compose_run_config([*base_overrides, *sampled])
    for parameter in (p for p in space.parameters if not p.is_group):
        if not has_key(cfg, parameter.key):
            continue
        sampled.append(override_for(parameter.key, suggest(trial, parameter)))
    return compose_run_config([*base_overrides, *sampled]), sampled


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def close_orphaned_runs(study: optuna.Study, tracker: Tracker) -> int:
    """Mark FAIL every trial whose worker died, and close its MLflow run as KILLED; return how many runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeats are experimental in Optuna 5.1
        optuna.storages.fail_stale_trials(study)
    closed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and tracker.run_status(run_id) == "RUNNING":
            tracker.client.set_tag(run_id, "trial_state", "FAIL")
            tracker.client.set_terminated(run_id, "KILLED")
            log.warning("trial %d was left running by a stopped worker: its MLflow run %s is now KILLED", trial.number, run_id)
            closed += 1
    return closed


def worker_device(index: int, requested: str) -> str | None:
    """Return a `trainer.device` override that pins worker `index` to its own GPU, round robin, if several exist."""
    if requested not in ("auto", "cuda") or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    return f"cuda:{index % torch.cuda.device_count()}"


class TrialRunner:
    """Runs one study's trials in this process, each inside a nested MLflow child run."""

    def __init__(self, study: optuna.Study, spec: SweepSpec, settings: DictConfig, device_override: str | None = None) -> None:
        self.study = study
        self.spec = spec
        self.settings = settings
        self.space = parse_search_space(spec.params)
        self.base_overrides = list(spec.base_overrides) + ([f"trainer.device={device_override}"] if device_override else [])
        self.tracker = Tracker(compose_run_config(self.base_overrides).tracking)
        self.worker_tag = f"{socket.gethostname()}:{os.getpid()}:{device_override or 'default device'}"

    def objective(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        objectives = self.spec.objectives
        child = self.tracker.start_run(
            f"trial-{trial.number}",
            tags={"trial_number": str(trial.number), "study_name": self.study.study_name, "worker": self.worker_tag},
            parent_run_id=self.spec.parent_run_id,
        )
        trial.set_user_attr("mlflow_run_id", child.run_id)
        state = TrialState.FAIL
        try:
            with child:
                cfg, overrides = sample_config(trial, self.space, self.base_overrides)
                trial.set_user_attr("overrides", overrides)
                child.set_tags({"overrides": " ".join(overrides)})
                # Optuna takes intermediate values from single-objective trials only, so only those can be pruned.
                reporting_trial = None if objectives.multi else trial
                result = run(cfg, reporting_trial, tracked_run=child, objective=objectives.metrics[0], evaluate_test=False)
                missing = [m for m in objectives.metrics if m not in result.metrics]
                if missing:
                    raise ConfigError(f"sweep.metric {missing[0]!r} is not a logged metric: use one of {sorted(result.metrics)}")
                values = tuple(result.metrics[m] for m in objectives.metrics)
                state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
            raise
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            raise
        finally:
            self.tracker.client.set_tag(child.run_id, "trial_state", state.name)
        return values if objectives.multi else values[0]

    def run(self, worker_index: int = 0) -> None:
        """Run trials until the study contains `n_trials` finished ones, the timeout passes, or too many fail."""
        callbacks = [_StopAtTrialCount(self.settings.n_trials)]
        if self.settings.max_failures:
            callbacks.append(_StopAfterFailures(self.settings.max_failures))
        if _count_started(self.study) >= self.settings.n_trials:
            return  # the study is done, or other workers are running its last trials
        with warnings.catch_warnings():
            # With heartbeats on, Optuna 5.1 checks for dead trials before each trial through a function
            # it marks experimental; that warning would repeat for every trial.
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.study.optimize(
                self.objective,
                timeout=self.settings.timeout,
                callbacks=callbacks,
                catch=(Exception,),  # a failing configuration ends its trial as FAIL; the sweep goes on
                gc_after_trial=False,
            )


class _StopAtTrialCount:
    """Stop this worker once finished trials plus other workers' running ones reach `n_trials`.

    Counting running trials keeps parallel workers from overshooting `n_trials`.
    NOTE: two workers that check in the same few milliseconds can still start one trial too many.
    """

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if _count_started(study) >= self.n_trials:
            study.stop()


def _count_started(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(*FINISHED_STATES, TrialState.RUNNING)))


class _StopAfterFailures:
    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if len(failed) >= self.limit:
            log.error(
                "sweep stopped: %d trials failed (sweep.max_failures=%d); the last error: %s",
                len(failed), self.limit, failed[-1].user_attrs.get("error", "unknown"),
            )
            study.stop()


def load_study_for_worker(settings: DictConfig, worker_index: int) -> tuple[optuna.Study, SweepSpec]:
    """Open the storage and load the study with this worker's sampler and the study's pruner."""
    storage = open_storage(settings)
    try:
        probe = optuna.load_study(study_name=settings.study_name, storage=storage)
    except KeyError:
        raise ConfigError(
            f"no study {settings.study_name!r} in {settings.storage}: check sweep.study_name and sweep.storage"
        ) from None
    spec = SweepSpec.from_study(probe)
    space = parse_search_space(spec.params)
    max_epochs = compose_run_config(spec.base_overrides).trainer.max_epochs
    # Each worker, and each restart, seeds its sampler differently, or they would replay the same values.
    seed = settings.seed + 1000 * worker_index + len(probe.trials)
    study = optuna.load_study(
        study_name=settings.study_name,
        storage=storage,
        sampler=make_sampler(settings, space, seed),
        pruner=make_pruner(settings, spec.objectives, max_epochs),
    )
    return study, spec


def worker_process(settings_container: dict, worker_index: int, n_workers: int, device: str | None) -> None:
    """Entry point of a spawned worker process on this machine."""
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s][worker {worker_index}][%(name)s][%(levelname)s] - %(message)s")
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    # Split the CPU between workers so that they do not oversubscribe the cores.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_workers))
    settings = OmegaConf.create(settings_container)
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            study, spec = load_study_for_worker(settings, worker_index)
            TrialRunner(study, spec, settings, device).run(worker_index)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except ConfigError as error:
        log.error("%s", error)
        raise SystemExit(2) from None


