"""Fixed-budget comparison of the losses on long-tailed digits: `make compare-losses`.

Every loss trains the same model for the same number of epochs on the same long-tailed training
split (digits, imbalance ratio 100), once per seed, and is scored on the balanced test split. No
setting is tuned on the test split: each loss runs at its documented defaults. The result is a
Markdown table with mean and standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from imbalance_sweep.config import CONF_DIR, PROJECT_ROOT
from imbalance_sweep.cli import exit_on_config_error
from imbalance_sweep.train import run

log = logging.getLogger(__name__)

# (label, overrides). DRW starts at two thirds of the budget; the overrides are added per run.
VARIANTS: list[tuple[str, list[str]]] = [
    ("ce", ["loss=ce"]),
    ("weighted_ce (inverse)", ["loss=weighted_ce", "loss.weights=inverse"]),
    ("focal (gamma 2)", ["loss=focal"]),
    ("class_balanced (beta 0.999)", ["loss=class_balanced"]),
    ("ldam", ["loss=ldam"]),
    ("ldam + drw", ["loss=ldam", "loss.drw_start_epoch={drw_epoch}"]),
    ("balanced_softmax", ["loss=balanced_softmax"]),
    ("logit_adjusted (tau 1)", ["loss=logit_adjusted"]),
    ("logit_adjusted post-hoc (tau 1)", ["loss=logit_adjusted", "loss.posthoc=true"]),
]
RARE_CLASSES = ("7", "8", "9")  # the three smallest training classes of the digits long tail


def compare_losses(seeds: list[int], epochs: int, imbalance_ratio: float, tracking_uri: str | None) -> list[dict]:
    """Run every variant once per seed and return one row of metrics per variant."""
    rows = []
    base = [f"data.imbalance_ratio={imbalance_ratio}", f"trainer.max_epochs={epochs}", "tracking.experiment=compare-losses"]
    if tracking_uri:
        base.append(f"tracking.uri={tracking_uri}")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        for label, overrides in VARIANTS:
            results = []
            for seed in seeds:
                filled = [o.format(drw_epoch=(2 * epochs) // 3) for o in overrides]
                cfg = compose(config_name="train", overrides=[*base, *filled, f"seed={seed}"])
                result = run(cfg)
                results.append(result.metrics)
                log.info("%s seed %d: test balanced accuracy %.3f", label, seed, result.metrics["test/balanced_accuracy"])
            rows.append({"label": label, "results": results})
    return rows


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def format_table(rows: list[dict]) -> str:
    lines = [
        "| loss | test balanced accuracy | test recall, rarest class (9) | test recall, 3 rarest (7, 8, 9) | test macro-F1 |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        results = row["results"]
        balanced = [r["test/balanced_accuracy"] for r in results]
        rarest = [r["test/recall/9"] for r in results]
        tail = [statistics.mean(r[f"test/recall/{c}"] for c in RARE_CLASSES) for r in results]
        macro = [r["test/macro_f1"] for r in results]
        lines.append(f"| {row['label']} | {_mean_std(balanced)} | {_mean_std(rarest)} | {_mean_std(tail)} | {_mean_std(macro)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (model init, batch order)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per run, the same for every loss")
    parser.add_argument("--imbalance-ratio", type=float, default=100.0, help="largest / smallest training class")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the local store)")
    parser.add_argument("--output", type=Path, default=None, help="write the table to this Markdown file")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    started = time.monotonic()
    with exit_on_config_error():
        rows = compare_losses(arguments.seeds, arguments.epochs, arguments.imbalance_ratio, arguments.tracking_uri)
    table = format_table(rows)
    print(table)
    print(f"\n{len(rows) * len(arguments.seeds)} runs in {time.monotonic() - started:.0f} s")
    if arguments.output:
        arguments.output.write_text(table + "\n")
        print(f"table written to {arguments.output.relative_to(PROJECT_ROOT) if arguments.output.is_absolute() else arguments.output}")


if __name__ == "__main__":
    main()
