"""One Optuna study over a search space: `python -m imbalance_sweep.sweep [sweep=NAME] [overrides]`.

The loop is ours (Optuna's `optimize` around our objective), not a Hydra sweeper plugin, so every
epoch can report to the pruner, group choices can switch which keys exist, and rerunning the same
command resumes the study from its storage. Each trial composes `train.yaml` with the command's
overrides plus the sampled ones and calls the same `run` as a plain training run, inside a nested
MLflow child run. This command creates or resumes the study, runs its trials in one or
`sweep.n_workers` processes, then retrains the best configuration and scores it once on test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import hydra
import optuna
import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.trial import FrozenTrial, TrialState

from imbalance_sweep.cli import check_command_line, exit_on_config_error, raise_keyboard_interrupt
from imbalance_sweep.config import CONF_DIR, SWEEPS_DIR, has_key, validate
from imbalance_sweep.errors import ConfigError
from imbalance_sweep.report import format_summary
from imbalance_sweep.search_space import SearchSpace, override_for, parse_search_space
from imbalance_sweep.study_setup import Objectives, SweepConfig, is_sqlite, open_storage, parse_objectives, validate_settings
from imbalance_sweep.tracking import TrackedRun, Tracker
from imbalance_sweep.train import run
from imbalance_sweep.workers import (
    SPEC_ATTR,
    SweepSpec,
    TrialRunner,
    close_orphaned_runs,
    compose_run_config,
    count_finished,
    load_study_for_worker,
    worker_device,
    worker_process,
)

log = logging.getLogger(__name__)

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
    best: FrozenTrial | None
    final_metrics: dict[str, float] | None
    class_names: list[str]
    summary: str


def run_sweep(settings: DictConfig, sweep_name: str, run_overrides: list[str]) -> SweepOutcome:
    """Create or resume the study, run its trials, and score the best configuration once on test.

    Needs an initialised Hydra (inside `hydra.main` or `initialize_config_dir`).
    """
    objectives = parse_objectives(settings)
    space = parse_search_space(settings.params)
    validate_settings(settings, space)
    run_overrides = _drop_swept_overrides(run_overrides, space)
    base_overrides = [*run_overrides, *space.fixed_overrides]
    base_cfg = compose_run_config(base_overrides)
    validate(base_cfg)
    _check_space_keys(space, base_overrides, base_cfg)
    if settings.n_workers > 1 and is_sqlite(str(settings.storage)):
        raise ConfigError(
            f"sweep.n_workers={settings.n_workers} with SQLite storage {settings.storage}: SQLite serves one process at a time, "
            "so use a journal file (sweep.storage=mlruns/optuna.journal) or a database server"
        )

    settings = OmegaConf.merge(settings, {"study_name": settings.study_name or default_study_name(sweep_name, base_cfg, space)})
    study = optuna.create_study(
        study_name=settings.study_name, storage=open_storage(settings), directions=list(objectives.directions), load_if_exists=True
    )
    if [d.name.lower() for d in study.directions] != list(objectives.directions):
        raise ConfigError(
            f"study {settings.study_name!r} exists with directions {[d.name.lower() for d in study.directions]}: "
            "use another sweep.study_name for other objectives"
        )
    tracker = Tracker(base_cfg.tracking)
    parent = _open_parent_run(study, tracker, sweep_name, space, settings, objectives, base_overrides)
    close_orphaned_runs(study, tracker)
    log.info(
        "study %r in %s: %d of %d trials done (complete, pruned or failed); sampler %s (seed %d), pruner %s, "
        "objective %s, %d worker(s)",
        settings.study_name, settings.storage, count_finished(study), settings.n_trials, settings.sampler, settings.seed,
        settings.pruner, ", ".join(f"{m} ({d})" for m, d in zip(objectives.metrics, objectives.directions)), settings.n_workers,
    )

    try:
        _run_workers(settings, base_cfg)
        study = optuna.load_study(study_name=settings.study_name, storage=open_storage(settings))
        best = _chosen_trial(study, objectives)
        final_metrics, class_names = None, []
        if objectives.multi:
            _log_pareto_front(study, parent)
        if best is not None and parent.get_tag("test_evaluated_trial") == str(best.number):
            log.info("best trial %d was already scored on the test split; raise sweep.n_trials to add trials", best.number)
            final_metrics, class_names = parent.latest_metrics(), list(study.user_attrs.get("class_names", []))
        elif best is not None:
            final_metrics, class_names = _evaluate_best_on_test(study, best, parent, base_overrides, objectives)
    except KeyboardInterrupt:
        parent.end("KILLED")
        raise
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FINISHED")

    summary = format_summary(study, objectives, best, final_metrics, class_names, tracker.uri, parent.run_id)
    return SweepOutcome(study, parent.run_id, best, final_metrics, class_names, summary)


def _run_workers(settings: DictConfig, base_cfg: DictConfig) -> None:
    """Run the trials in this process, or in `sweep.n_workers` spawned processes, until the study is done."""
    if settings.n_workers <= 1:
        study, spec = load_study_for_worker(settings, worker_index=0)
        TrialRunner(study, spec, settings).run()
        return

    context = multiprocessing.get_context("spawn")  # no forked CUDA state, no inherited Hydra globals
    container = OmegaConf.to_container(settings, resolve=True)
    processes = []
    for index in range(settings.n_workers):
        device = worker_device(index, str(base_cfg.trainer.device))
        process = context.Process(target=worker_process, args=(container, index, settings.n_workers, device), name=f"worker-{index}")
        process.start()
        processes.append(process)
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker ends its trial as FAIL and its MLflow run as KILLED
        for process in processes:
            process.join(timeout=60)
        raise
    failed = [p.name for p in processes if p.exitcode not in (0, None)]
    if failed:
        log.warning("workers %s exited with an error; see their log lines above", ", ".join(failed))


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
            candidates = [compose_run_config([*base_overrides, override_for(group, option)]) for option in options]
        if not any(has_key(cfg, parameter.key) for cfg in candidates):
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


def _open_parent_run(
    study: optuna.Study, tracker: Tracker, sweep_name: str, space: SearchSpace, settings: DictConfig,
    objectives: Objectives, base_overrides: list[str],
) -> TrackedRun:
    """Reopen the study's parent run when resuming, else create it and store the sweep spec in the study."""
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored and tracker.run_exists(stored["parent_run_id"]):
        log.info("resuming MLflow parent run %s", stored["parent_run_id"])
        return tracker.resume_run(stored["parent_run_id"])
    parent = tracker.start_run(study.study_name)
    parent.set_tags({
        "study_name": study.study_name,
        "sweep": sweep_name,
        "search_space": json.dumps(space.describe()),
        "fixed_overrides": json.dumps(list(space.fixed_overrides)),
        "storage": settings.storage,
        "metric": ",".join(objectives.metrics),
        "direction": ",".join(objectives.directions),
        "sampler": settings.sampler,
        "pruner": settings.pruner,
    })
    spec = SweepSpec(sweep_name, base_overrides, dict(space.describe()), list(objectives.metrics), list(objectives.directions), parent.run_id)
    study.set_user_attr(SPEC_ATTR, spec.__dict__)
    return parent


def _chosen_trial(study: optuna.Study, objectives: Objectives) -> FrozenTrial | None:
    """Return the best trial; for several objectives, the Pareto-optimal trial best on the first metric."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    if not objectives.multi:
        return study.best_trial
    sign = 1 if objectives.directions[0] == "maximize" else -1
    return max(study.best_trials, key=lambda t: sign * t.values[0])


def _log_pareto_front(study: optuna.Study, parent: TrackedRun) -> None:
    front = [{"number": t.number, "values": t.values, "params": t.params} for t in sorted(study.best_trials, key=lambda t: t.number)]
    parent.log_dict(front, "pareto_front.json")
    parent.set_tags({"pareto_front": ",".join(str(t["number"]) for t in front)})


def _evaluate_best_on_test(
    study: optuna.Study, best: FrozenTrial, parent: TrackedRun, base_overrides: list[str], objectives: Objectives
) -> tuple[dict[str, float], list[str]]:
    """Retrain the chosen trial's configuration and score it once on the test split, logged on the parent.

    On the CPU a retrain with the same seed repeats the trial exactly. The parent's val/ curves come
    from the retrain, and its test/ metrics are the only test-split numbers of the whole sweep.
    """
    overrides = list(best.user_attrs.get("overrides", []))
    log.info("retraining best trial %d (%s) to score it on the test split", best.number, " ".join(overrides))
    parent.set_tags({
        "best_trial": str(best.number),
        "best_value": ",".join(f"{v:.6f}" for v in best.values),
        "best_params": json.dumps(best.params),
        "best_overrides": " ".join(overrides),
    })
    cfg = compose_run_config([*base_overrides, *overrides])
    result = run(cfg, None, tracked_run=parent, objective=objectives.metrics[0], evaluate_test=True, log_params=False)
    parent.set_tags({"test_evaluated_trial": str(best.number)})
    study.set_user_attr("class_names", result.class_names)
    return result.metrics, result.class_names




register_sweep_files()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="study")
def main(cfg: DictConfig) -> Optional[float]:
    for message in SWEEP_FILE_ERRORS.values():
        log.warning("%s; that sweep is unavailable", message)
    hydra_cfg = HydraConfig.get()
    sweep_name = hydra_cfg.runtime.choices.get("sweep", "default")
    parser = OverridesParser.create()
    run_overrides = [o for o in hydra_cfg.overrides.task if not parser.parse_override(o).key_or_group.startswith("sweep")]
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)

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
    return outcome.best.values[0] if outcome.best else None


if __name__ == "__main__":
    with exit_on_config_error():
        check_command_line(sys.argv[1:], "study", SWEEP_FILE_ERRORS)
    main()
