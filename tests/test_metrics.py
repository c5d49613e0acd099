import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support

from imbalance_sweep.metrics import evaluate_predictions

NAMES = ["cat", "dog", "rare"]


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, size=200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 3, size=200))
    result = evaluate_predictions(y_true, y_pred, NAMES).metrics

    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    for index, name in enumerate(NAMES):
        assert result[f"precision/{name}"] == pytest.approx(precision[index])
        assert result[f"recall/{name}"] == pytest.approx(recall[index])
        assert result[f"f1/{name}"] == pytest.approx(f1[index])
    assert result["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert result["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_metrics_hand_computed():
    # rare: 2 true samples, 1 found; 1 false alarm from cat.
    y_true = np.array([0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 2, 1, 1, 2, 0])
    result = evaluate_predictions(y_true, y_pred, NAMES)
    assert result.metrics["recall/rare"] == pytest.approx(0.5)
    assert result.metrics["precision/rare"] == pytest.approx(0.5)
    assert result.metrics["recall/cat"] == pytest.approx(2 / 3)
    assert result.metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert result.confusion.tolist() == [[2, 0, 1], [0, 2, 0], [1, 0, 1]]


def test_never_predicted_class_zero_precision():
    y_true = np.array([0, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1])
    result = evaluate_predictions(y_true, y_pred, NAMES).metrics
    assert result["precision/rare"] == 0.0
    assert result["f1/rare"] == 0.0


def test_missing_class_reported_not_dropped(caplog):
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 2, 1, 1])
    result = evaluate_predictions(y_true, y_pred, NAMES)
    assert result.missing_classes == ["rare"]
    assert "recall/rare" in result.metrics
    assert result.metrics["recall/rare"] == 0.0
    assert result.metrics["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert "rare" in caplog.text
    assert "rare" in result.report
