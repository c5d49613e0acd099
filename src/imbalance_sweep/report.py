"""Plain-text summary of a finished sweep, printed by `python -m imbalance_sweep.sweep`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState


def trial_state_counts(study: optuna.Study) -> Counter:
    return Counter(trial.state.name for trial in study.get_trials(deepcopy=False))


def format_summary(
    study: optuna.Study,
    objectives,
    best: FrozenTrial | None,
    final_metrics: dict[str, float] | None,
    class_names: list[str],
    tracking_uri: str,
    parent_run_id: str,
) -> str:
    """Return the end-of-sweep report: trial counts, best parameters, per-class val and test scores."""
    counts = trial_state_counts(study)
    states = ", ".join(f"{counts.get(state.name, 0)} {state.name.lower()}" for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    lines = [f"Study {study.study_name!r}: {sum(counts.values())} trials ({states})"]
    if best is None:
        lines.append("No trial completed, so there is no best configuration.")
    else:
        if objectives.multi:
            front = sorted(t.number for t in study.best_trials)
            lines.append(f"Pareto front (trials): {front}")
            lines.append(f"Chosen: the Pareto-optimal trial best on {objectives.metrics[0]}")
        values = ", ".join(f"{m} = {v:.4f}" for m, v in zip(objectives.metrics, best.values))
        lines.append(f"Best trial {best.number}: {values}")
        for key, value in best.params.items():
            lines.append(f"  {key} = {value:.4g}" if isinstance(value, float) else f"  {key} = {value}")

    if final_metrics:
        lines.append("")
        lines.append("Best configuration, retrained and scored once on the test split:")
        lines.append(format_class_table(final_metrics, class_names))

    lines.append("")
    lines.append(f"MLflow parent run {parent_run_id} in {display_uri(tracking_uri)}; browse it with `make ui`.")
    return "\n".join(lines)


def format_class_table(metrics: dict[str, float], class_names: list[str]) -> str:
    """Return per-class precision, recall and F1 on validation and test, then the aggregates."""
    header = f"{'class':<20} {'val P':>7} {'val R':>7} {'val F1':>7} | {'test P':>7} {'test R':>7} {'test F1':>7}"
    lines = [header, "-" * len(header)]
    for name in class_names:
        row = [metrics.get(f"{stage}/{kind}/{name}", float("nan")) for stage in ("val", "test") for kind in ("precision", "recall", "f1")]
        lines.append(f"{name[:20]:<20} {row[0]:>7.3f} {row[1]:>7.3f} {row[2]:>7.3f} | {row[3]:>7.3f} {row[4]:>7.3f} {row[5]:>7.3f}")
    lines.append("-" * len(header))
    for aggregate in ("macro_f1", "balanced_accuracy", "accuracy"):
        val, test = metrics.get(f"val/{aggregate}", float("nan")), metrics.get(f"test/{aggregate}", float("nan"))
        lines.append(f"{aggregate:<20} {'':>7} {'':>7} {val:>7.3f} | {'':>7} {'':>7} {test:>7.3f}")
    return "\n".join(lines)


def display_uri(uri: str) -> str:
    """Show a relative local SQLite URI as an absolute one, so the store can be found from any folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri
