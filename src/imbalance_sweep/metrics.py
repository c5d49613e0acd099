"""Per-class and aggregate classification metrics, all from scikit-learn.

Precision, recall and F1 use `zero_division=0`: a class that is never predicted gets precision 0
instead of an undefined value. A class absent from a split is reported by name in a warning and
keeps its keys (recall 0). Balanced accuracy then averages over the classes present, as
scikit-learn defines it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Metrics of one split: flat `{name: value}` without the stage prefix, plus the raw tables."""

    metrics: dict[str, float]
    confusion: np.ndarray
    report: dict
    missing_classes: list[str]


def evaluate_predictions(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> Evaluation:
    """Compute accuracy, balanced accuracy, macro-F1 and per-class precision, recall and F1."""
    labels = list(range(len(class_names)))
    present = set(np.unique(y_true).tolist())
    missing = [class_names[c] for c in labels if c not in present]
    if missing:
        log.warning("classes %s have no samples in this split; their recall is reported as 0", missing)

    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    with warnings.catch_warnings():
        # Raised when a class is predicted but absent from y_true; reported above by name instead.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = balanced_accuracy_score(y_true, y_pred)

    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    for c, name in enumerate(class_names):
        metrics[f"precision/{name}"] = float(precision[c])
        metrics[f"recall/{name}"] = float(recall[c])
        metrics[f"f1/{name}"] = float(f1[c])

    report = classification_report(
        y_true, y_pred, labels=labels, target_names=class_names, zero_division=0, output_dict=True
    )
    return Evaluation(metrics, confusion_matrix(y_true, y_pred, labels=labels), report, missing)
