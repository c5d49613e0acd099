"""Join an existing study from any machine: `python -m imbalance_sweep.worker sweep.study_name=NAME sweep.storage=URL`.

The study itself stores what its trials inherit: base overrides, search space, objectives and the
MLflow parent run. A worker therefore needs only the study's name and storage. It may also set
`trainer.device` and the `sweep.*` settings of its own loop (`n_trials`, `timeout`, `sampler`, ...). It
runs trials until the study holds `sweep.n_trials` finished trials and does not score the test
split; rerun `python -m imbalance_sweep.sweep` with the same study to do that and print the summary.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from imbalance_sweep.cli import check_command_line, exit_on_config_error, raise_keyboard_interrupt
from imbalance_sweep.config import CONF_DIR
from imbalance_sweep.errors import ConfigError
from imbalance_sweep.study_setup import is_sqlite
from imbalance_sweep.sweep import SWEEP_FILE_ERRORS
from imbalance_sweep.workers import TrialRunner, close_orphaned_runs, count_finished, load_study_for_worker

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="study")
def main(cfg: DictConfig) -> None:
    settings = cfg.sweep
    parser = OverridesParser.create()
    device = None
    for text in HydraConfig.get().overrides.task:
        key = parser.parse_override(text).key_or_group
        if key == "trainer.device":
            device = str(cfg.trainer.device)
        elif not key.startswith("sweep"):
            with exit_on_config_error():
                raise ConfigError(f"{text} cannot be set on a worker: the study fixes the run config; only trainer.device and sweep.* may be set")
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)

    with exit_on_config_error():
        if not settings.study_name:
            raise ConfigError("sweep.study_name is not set: pass the name the sweep command logged, with sweep.storage=URL")
        if is_sqlite(str(settings.storage)):
            log.warning("sweep.storage is SQLite, which serves one process at a time: use PostgreSQL or a journal file for several workers")
        study, spec = load_study_for_worker(settings, worker_index=_worker_index())
        runner = TrialRunner(study, spec, settings, device)
        close_orphaned_runs(study, runner.tracker)
        log.info("worker joined study %r in %s: %d of %d trials done", study.study_name, settings.storage, count_finished(study), settings.n_trials)
        try:
            runner.run()
        except KeyboardInterrupt:
            print("\ninterrupted: finished trials are saved; start the worker again to continue", file=sys.stderr)
            raise SystemExit(130) from None
    log.info("study %r has %d finished trials; run imbalance_sweep.sweep with it to score the best on test", study.study_name, count_finished(study))


def _worker_index() -> int:
    """Return a per-process offset for the sampler seed, so that workers started alike draw different values."""
    return os.getpid() % 1000 + 1


if __name__ == "__main__":
    with exit_on_config_error():
        check_command_line(sys.argv[1:], "study", SWEEP_FILE_ERRORS)
    main()
