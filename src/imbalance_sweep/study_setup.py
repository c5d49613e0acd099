"""Sweep settings and the Optuna pieces built from them: storage, sampler, pruner, objectives.

Everything here is built from the `sweep` config group, whose options are the files in sweeps/.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna
from omegaconf import DictConfig, ListConfig
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.exceptions import ExperimentalWarning
from sqlalchemy.exc import SQLAlchemyError

from imbalance_sweep.errors import ConfigError
from imbalance_sweep.search_space import SearchSpace

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "cmaes", "grid", "nsga2", "qmc")
PRUNERS = ("none", "median", "successive_halving", "hyperband")


@dataclass
class SweepConfig:
    """Settings of the `sweep` group; each file in sweeps/ overrides some of them and sets `params`."""

    n_trials: int = 20  # the study stops once it contains this many finished (complete, pruned, failed) trials
    timeout: Optional[float] = None  # seconds this command may spend before it stops starting new trials
    study_name: Optional[str] = None  # null: <sweep>-<data>-<hash of the base config and search space>
    storage: str = "sqlite:///mlruns/optuna.db"  # Optuna storage URL, or a plain path for a journal file
    metric: Any = "val/macro_f1"  # objective, or a list of objectives; validation metrics only
    direction: Any = "maximize"  # maximize | minimize, or one per metric
    sampler: str = "tpe"  # tpe | random | cmaes | grid | nsga2 | qmc
    seed: int = 0  # seeds the sampler
    n_startup_trials: int = 5  # random trials before TPE models the space, and before median pruning starts
    pruner: str = "median"  # none | median | successive_halving | hyperband
    pruner_warmup_epochs: int = 3  # median: epochs a trial always runs before it can be pruned
    pruner_min_resource: int = 1  # successive_halving, hyperband: epochs before the first rung
    pruner_reduction_factor: int = 3  # successive_halving, hyperband: keep 1 / factor trials per rung
    n_workers: int = 1  # worker processes on this machine; >1 needs a journal file or a database server
    heartbeat_interval: int = 30  # seconds between heartbeats of a running trial (RDB storages only)
    grace_period: Optional[int] = None  # seconds without heartbeat before a trial counts as dead; null: 2 x interval
    retry_failed: int = 1  # times a trial whose worker died is run again
    max_failures: Optional[int] = None  # stop the sweep once this many trials of the study have failed
    params: dict[str, Any] = field(default_factory=dict)  # key: Hydra sweep expression


@dataclass(frozen=True)
class Objectives:
    metrics: tuple[str, ...]
    directions: tuple[str, ...]

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1


def parse_objectives(settings: DictConfig) -> Objectives:
    """Read `sweep.metric` and `sweep.direction` (single values or lists) and check them."""
    metrics = list(settings.metric) if isinstance(settings.metric, (list, ListConfig)) else [settings.metric]
    directions = list(settings.direction) if isinstance(settings.direction, (list, ListConfig)) else [settings.direction]
    if len(directions) == 1 and len(metrics) > 1:
        directions = directions * len(metrics)
    if len(directions) != len(metrics):
        raise ConfigError(f"sweep.direction has {len(directions)} entries for {len(metrics)} metrics: give one per metric")
    for metric in metrics:
        if not str(metric).startswith("val/"):
            raise ConfigError(f"sweep.metric {metric!r} is not a validation metric: the objective may only read val/...")
    for direction in directions:
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"sweep.direction {direction!r} is invalid: use maximize or minimize")
    return Objectives(tuple(str(m) for m in metrics), tuple(str(d) for d in directions))


def validate_settings(settings: DictConfig, space: SearchSpace) -> None:
    """Raise `ConfigError` for an invalid `sweep.*` setting before any study or worker starts."""
    minimums = {"n_trials": 1, "n_workers": 1, "heartbeat_interval": 1, "retry_failed": 0, "n_startup_trials": 0,
                "pruner_warmup_epochs": 0, "pruner_min_resource": 1, "pruner_reduction_factor": 2}
    for key, minimum in minimums.items():
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"sweep.{key}={value!r} is invalid: use an integer >= {minimum}")
    if settings.pruner not in PRUNERS:
        raise ConfigError(f"unknown sweep.pruner {settings.pruner!r}: use one of {', '.join(PRUNERS)}")
    make_sampler(settings, space, seed=0)  # rejects an unknown sampler, or grid over a continuous range


def is_sqlite(storage: str) -> bool:
    return storage.startswith("sqlite:")


def open_storage(settings: DictConfig) -> optuna.storages.BaseStorage:
    """Return the Optuna storage: RDB with heartbeats for a database URL, a journal file for a plain path.

    Heartbeats let a later start recognise a trial whose process died, mark it FAIL and, with
    `retry_failed`, queue it again. Optuna's journal storage has no heartbeats.
    """
    url = str(settings.storage)
    if "://" not in url:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Heartbeats and the stale-trial retry are experimental in Optuna 5.1 (RetryFailedTrialCallback,
        # which they replace, is deprecated).
        warnings.simplefilter("ignore", ExperimentalWarning)
        callback = None
        if settings.retry_failed > 0:
            callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=settings.retry_failed)
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.grace_period,
                heartbeat_stale_trial_callback=callback,
            )
        except ImportError as error:
            raise ConfigError(f"sweep.storage {url!r} needs a database driver ({error}): install it, e.g. psycopg2-binary for PostgreSQL") from None
        except SQLAlchemyError as error:
            first_line = str(error).splitlines()[0]
            raise ConfigError(f"cannot open sweep.storage {url!r} ({first_line}): check the URL and that the server is running") from None


def make_sampler(settings: DictConfig, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """Build the configured sampler with `seed` (the caller offsets it per worker and on resume)."""
    name = settings.sampler
    if name == "tpe":
        conditional = any(not p.is_group for p in space.parameters) and any(p.is_group for p in space.parameters)
        with warnings.catch_warnings():
            # `group=True` (experimental in Optuna 5.1) lets multivariate TPE model conditional spaces.
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=settings.n_startup_trials, multivariate=True, group=conditional
            )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES models numeric parameters only; group choices and categoricals fall back to random sampling.
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=settings.n_startup_trials, warn_independent_sampling=False)
    if name == "grid":
        return optuna.samplers.GridSampler(grid_search_space(space), seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "qmc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # QMCSampler is experimental in Optuna 5.1
            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    raise ConfigError(f"unknown sweep.sampler {name!r}: use one of {', '.join(SAMPLERS)}")


def grid_search_space(space: SearchSpace) -> dict[str, list]:
    """Return every parameter's values for GridSampler; only choice() and integer range() are finite."""
    grid = {}
    for parameter in space.parameters:
        distribution = parameter.distribution
        if isinstance(distribution, CategoricalDistribution):
            grid[parameter.key] = list(distribution.choices)
        elif isinstance(distribution, IntDistribution):
            grid[parameter.key] = list(range(distribution.low, distribution.high + 1, distribution.step))
        elif distribution.step is not None:
            count = round((distribution.high - distribution.low) / distribution.step) + 1
            grid[parameter.key] = [round(distribution.low + i * distribution.step, 12) for i in range(count)]
        else:
            raise ConfigError(
                f"sweep.sampler=grid needs finite values, but {parameter.key} is {parameter.expression}: use choice() or range()"
            )
    return grid


def make_pruner(settings: DictConfig, objectives: Objectives, max_epochs: int) -> optuna.pruners.BasePruner:
    name = settings.pruner
    if name not in PRUNERS:
        raise ConfigError(f"unknown sweep.pruner {name!r}: use one of {', '.join(PRUNERS)}")
    if objectives.multi and name != "none":
        log.warning("sweep.pruner=%s is off: Optuna cannot report intermediate values of a multi-objective study", name)
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.n_startup_trials, n_warmup_steps=settings.pruner_warmup_epochs)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=settings.pruner_min_resource, reduction_factor=settings.pruner_reduction_factor
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=settings.pruner_min_resource, max_resource=max_epochs, reduction_factor=settings.pruner_reduction_factor
        )
    return optuna.pruners.NopPruner()
