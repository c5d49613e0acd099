"""One Optuna study over a search space: `python -m imbalance_sweep.sweep [sweep=NAME] [overrides]`.

The loop is ours (ask, run, tell), not a Hydra sweeper plugin, so every epoch can report to the
pruner, group choices can switch which keys exist, and rerunning the same command resumes the study
from its storage. Each trial composes `train.yaml` with the command's overrides plus the sampled
ones and calls the same `run` as a plain training run, inside a nested MLflow child run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra
import optuna
import yaml
from hydra import compose
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.trial import TrialState

from imbalance_sweep.cli import check_command_line, exit_on_config_error
from imbalance_sweep.config import CONF_DIR, SWEEPS_DIR, validate
from imbalance_sweep.errors import ConfigError
from imbalance_sweep.report import format_summary
from imbalance_sweep.search_space import SearchSpace, override_for, parse_search_space, suggest
from imbalance_sweep.tracking import TrackedRun, Tracker
from imbalance_sweep.train import run

log = logging.getLogger(__name__)

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
PARENT_RUN_ATTR = "mlflow_parent_run_id"


@dataclass
class SweepConfig:
    """Settings of the `sweep` group; each file in sweeps/ overrides some of them and sets `params`."""

    n_trials: int = 20  # the study stops once it contains this many finished (complete, pruned, failed) trials
    timeout: Optional[float] = None  # seconds this command may spend before it stops starting new trials
    study_name: Optional[str] = None  # null: <sweep>-<data>-<hash of the base config>, so a changed setup starts a new study
    storage: str = "sqlite:///mlruns/optuna.db"  # Optuna storage URL, or a plain path for a journal file
    metric: str = "val/macro_f1"  # objective; must be a validation metric
    direction: str = "maximize"  # maximize | minimize
    seed: int = 0  # seeds the sampler
    n_startup_trials: int = 5  # random trials before TPE models the space, and before pruning starts
    pruner: str = "median"  # median | none
    pruner_warmup_epochs: int = 3  # epochs a trial always runs before it can be pruned
    params: dict[str, Any] = field(default_factory=dict)  # key: Hydra sweep expression


SWEEP_FILE_ERRORS: dict[str, str] = {}


def register_sweep_files(directory: Path = SWEEPS_DIR) -> list[str]:
    """Register every valid sweeps/NAME.yaml as option NAME of the `sweep` config group.

    An invalid file is skipped and its error kept in `SWEEP_FILE_ERRORS`, so that it breaks only the
    command that selects it.
    """
    store = ConfigStore.instance()
    names = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            node = OmegaConf.merge(OmegaConf.structured(SweepConfig), OmegaConf.load(path))
        except (OmegaConfBaseException, yaml.YAMLError) as error:
            SWEEP_FILE_ERRORS[path.stem] = f"invalid sweep file {path}: {str(error).splitlines()[0]}"
            continue
        store.store(group="sweep", name=path.stem, node=node)
        names.append(path.stem)
    return names


@dataclass
class SweepOutcome:
    study: optuna.Study
    parent_run_id: str
    best: optuna.trial.FrozenTrial | None
    final_metrics: dict[str, float] | None
    class_names: list[str]
    summary: str


def run_sweep(settings: DictConfig, sweep_name: str, run_overrides: list[str]) -> SweepOutcome:
    """Run (or resume) the study; needs an initialised Hydra (inside `hydra.main` or `initialize_config_dir`)."""
    if not str(settings.metric).startswith("val/"):
        raise ConfigError(f"sweep.metric={settings.metric!r} is not a validation metric: the objective may only read val/...")
    if settings.direction not in ("maximize", "minimize"):
        raise ConfigError(f"sweep.direction={settings.direction!r} is invalid: use maximize or minimize")
    space = parse_search_space(settings.params)
    run_overrides = _drop_swept_overrides(run_overrides, space)
    base_overrides = [*run_overrides, *space.fixed_overrides]
    base_cfg = _compose(base_overrides)
    validate(base_cfg)
    _check_space_keys(space, base_overrides, base_cfg)

    study_name = settings.study_name or default_study_name(sweep_name, base_cfg, space)
    study = optuna.create_study(
        study_name=study_name,
        storage=open_storage(str(settings.storage)),
        sampler=optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=settings.n_startup_trials),
        pruner=_pruner(settings),
        direction=settings.direction,
        load_if_exists=True,
    )
    # A resumed study reseeds its sampler past the trials it has, or it would replay their values.
    study.sampler = optuna.samplers.TPESampler(seed=settings.seed + len(study.trials), n_startup_trials=settings.n_startup_trials)
    tracker = Tracker(base_cfg.tracking)
    parent = _open_parent_run(study, tracker, sweep_name, space, settings)
    finished = _count_finished(study)
    log.info(
        "study %r in %s: %d of %d trials done (complete, pruned or failed), sampler TPE (seed %d), pruner %s, objective %s (%s)",
        study_name, settings.storage, finished, settings.n_trials, settings.seed, settings.pruner, settings.metric, settings.direction,
    )

    try:
        started = time.monotonic()
        while _count_finished(study) < settings.n_trials:
            if settings.timeout is not None and time.monotonic() - started > settings.timeout:
                log.info("sweep.timeout=%s s reached; rerun the command to continue", settings.timeout)
                break
            _run_trial(study, space, base_overrides, tracker, parent.run_id, settings.metric)

        best = _best_trial(study)
        final_metrics, class_names = None, []
        if best is not None and parent.get_tag("test_evaluated_trial") == str(best.number):
            log.info("best trial %d was already scored on the test split; raise sweep.n_trials to add trials", best.number)
            final_metrics, class_names = parent.latest_metrics(), list(study.user_attrs.get("class_names", []))
        elif best is not None:
            final_metrics, class_names = _evaluate_best_on_test(study, best, tracker, parent, base_overrides, settings.metric)
    except KeyboardInterrupt:
        parent.end("KILLED")
        raise
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FINISHED")

    summary = format_summary(study, settings.metric, best, final_metrics, class_names, tracker.uri, parent.run_id)
    return SweepOutcome(study, parent.run_id, best, final_metrics, class_names, summary)


def _check_space_keys(space: SearchSpace, base_overrides: list[str], base_cfg: DictConfig) -> None:
    """Reject a swept key that no option of its group has (a typo would otherwise never be sampled)."""
    group_choices = {p.key: p.distribution.choices for p in space.parameters if p.is_group}
    for parameter in space.parameters:
        if parameter.is_group:
            continue
        group = parameter.key.split(".")[0]
        options = group_choices.get(group)
        if options is None:
            candidates = [base_cfg]
        else:
            candidates = [_compose([*base_overrides, override_for(group, option)]) for option in options]
        if all(OmegaConf.select(cfg, parameter.key, default=_ABSENT) is _ABSENT for cfg in candidates):
            where = f"any of {group}={','.join(map(str, options))}" if options else f"the {group} config"
            raise ConfigError(f"sweep key {parameter.key} exists in none of {where}: check its spelling in the sweep file")


def default_study_name(sweep_name: str, base_cfg: DictConfig, space: SearchSpace) -> str:
    """Name a study after the sweep, the data and a hash of the search space and the base config.

    Changing the data, a fixed override or the search space therefore starts a new study instead of
    mixing incomparable trials. Sweep settings such as `n_trials` are not part of the hash.
    """
    source = base_cfg.data.name if base_cfg.data.name == "digits" else Path(str(base_cfg.data.path)).stem
    container = OmegaConf.to_container(base_cfg, resolve=True)
    container.pop("tracking", None)  # where results go does not change them
    container["search_space"] = space.describe()
    digest = hashlib.sha1(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{sweep_name}-{source}-{digest}"


def open_storage(storage: str) -> optuna.storages.BaseStorage | str:
    """Return an Optuna storage: a database URL as given, or a journal file for a plain path."""
    if "://" in storage:
        if storage.startswith("sqlite:///"):
            Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return storage
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _compose(overrides: list[str]) -> DictConfig:
    try:
        return compose(config_name="train", overrides=list(overrides))
    except hydra.errors.HydraException as error:
        raise ConfigError(f"cannot compose the run config: {str(error).splitlines()[0]}") from None


def _drop_swept_overrides(overrides: list[str], space: SearchSpace) -> list[str]:
    """Drop command-line overrides of keys the sweep samples; the sampled value would replace them."""
    swept = {parameter.key for parameter in space.parameters}
    parser = OverridesParser.create()
    kept = []
    for text in overrides:
        key = parser.parse_override(text).key_or_group
        if key in swept:
            log.warning("override %s is ignored: the sweep samples %s", text, key)
        else:
            kept.append(text)
    return kept


def _pruner(settings: DictConfig) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.n_startup_trials, n_warmup_steps=settings.pruner_warmup_epochs)
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown sweep.pruner {settings.pruner!r}: use median or none")


def _count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def _best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def _open_parent_run(study: optuna.Study, tracker: Tracker, sweep_name: str, space: SearchSpace, settings: DictConfig) -> TrackedRun:
    """Reopen the study's parent run when resuming, else create it and remember its id in the study."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id and tracker.run_exists(run_id):
        log.info("resuming MLflow parent run %s", run_id)
        return tracker.resume_run(run_id)
    parent = tracker.start_run(study.study_name)
    parent.set_tags({
        "study_name": study.study_name,
        "sweep": sweep_name,
        "search_space": json.dumps(space.describe()),
        "fixed_overrides": json.dumps(list(space.fixed_overrides)),
        "storage": settings.storage,
        "metric": settings.metric,
        "direction": settings.direction,
    })
    study.set_user_attr(PARENT_RUN_ATTR, parent.run_id)
    return parent


def _run_trial(study: optuna.Study, space: SearchSpace, base_overrides: list[str], tracker: Tracker, parent_run_id: str, metric: str) -> None:
    """Ask for a trial, run it inside a child run, and tell the study how it ended."""
    trial = study.ask()
    child = tracker.start_run(f"trial-{trial.number}", tags={"trial_number": str(trial.number), "study_name": study.study_name}, parent_run_id=parent_run_id)
    state, value = TrialState.FAIL, None
    try:
        with child:
            try:
                cfg, overrides = _sample_config(trial, space, base_overrides)
                trial.set_user_attr("overrides", overrides)
                child.set_tags({"overrides": " ".join(overrides)})
                result = run(cfg, trial, tracked_run=child, objective=metric)
                value, state = result.metrics[metric], TrialState.COMPLETE
            except optuna.TrialPruned:
                state = TrialState.PRUNED
                raise
            finally:
                child.set_tags({"trial_state": state.name})
    except optuna.TrialPruned:
        pass
    except KeyboardInterrupt:
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as error:  # any failure of one configuration ends that trial only
        log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
        trial.set_user_attr("error", f"{type(error).__name__}: {error}")
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
        log.info("trial %d complete: %s = %.4f", trial.number, metric, value)
    else:
        study.tell(trial, state=state)


def _sample_config(trial: optuna.Trial, space: SearchSpace, base_overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """Sample group choices, then only the keys that exist in the config those choices compose.

    A key that the chosen options lack (`loss.gamma` when `loss=ce`) is not sampled at all, which
    makes the Optuna search space conditional.
    """
    sampled: list[str] = []
    for parameter in (p for p in space.parameters if p.is_group):
        sampled.append(override_for(parameter.key, suggest(trial, parameter)))
    cfg = _compose([*base_overrides, *sampled])
    for parameter in (p for p in space.parameters if not p.is_group):
        if OmegaConf.select(cfg, parameter.key, default=_ABSENT) is _ABSENT:
            continue
        sampled.append(override_for(parameter.key, suggest(trial, parameter)))
    return _compose([*base_overrides, *sampled]), sampled


_ABSENT = object()


def _evaluate_best_on_test(
    study: optuna.Study, best: optuna.trial.FrozenTrial, tracker: Tracker, parent: TrackedRun, base_overrides: list[str], metric: str
) -> tuple[dict[str, float], list[str]]:
    """Retrain the best trial's configuration and score it once on the test split, logged on the parent.

    On the CPU a retrain with the same seed repeats the trial exactly. The parent's val/ curves come
    from the retrain, and its test/ metrics are the only test-split numbers of the whole sweep.
    """
    overrides = list(best.user_attrs.get("overrides", []))
    log.info("retraining best trial %d (%s) to score it on the test split", best.number, " ".join(overrides))
    parent.set_tags({"best_trial": str(best.number), "best_value": f"{best.value:.6f}", "best_params": json.dumps(best.params), "best_overrides": " ".join(overrides)})
    result = run(_compose([*base_overrides, *overrides]), None, tracked_run=parent, objective=metric, evaluate_test=True, log_params=False)
    parent.set_tags({"test_evaluated_trial": str(best.number)})
    study.set_user_attr("class_names", result.class_names)
    return result.metrics, result.class_names


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


register_sweep_files()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="study")
def main(cfg: DictConfig) -> Optional[float]:
    for message in SWEEP_FILE_ERRORS.values():
        log.warning("%s; that sweep is unavailable", message)
    hydra_cfg = HydraConfig.get()
    sweep_name = hydra_cfg.runtime.choices.get("sweep", "default")
    parser = OverridesParser.create()
    run_overrides = [o for o in hydra_cfg.overrides.task if not parser.parse_override(o).key_or_group.startswith("sweep")]
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    with exit_on_config_error():
        try:
            outcome = run_sweep(cfg.sweep, sweep_name, run_overrides)
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: finished trials are saved in {cfg.sweep.storage}; rerun the same command to resume the study",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
    print(outcome.summary)
    return outcome.best.value if outcome.best else None


if __name__ == "__main__":
    with exit_on_config_error():
        check_command_line(sys.argv[1:], "study", SWEEP_FILE_ERRORS)
    main()
