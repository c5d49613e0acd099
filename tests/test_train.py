"""One-epoch CPU runs on the bundled digits, read back from a real MLflow store in tmp_path."""

import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from imbalance_sweep.data import load_splits
from imbalance_sweep.errors import ConfigError
from imbalance_sweep.train import run


def read_artifact(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> str:
    local = client.download_artifacts(run_id, path, str(tmp_path / "download"))
    return Path(local).read_text()


def test_run_logs_contract_names(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_epochs=2", "loss=focal", "resample=random_over")
    result = run(cfg)
    client = MlflowClient(cfg.tracking.uri)
    logged = client.get_run(result.run_id)

    assert logged.info.status == "FINISHED"
    assert logged.data.params["loss.name"] == "focal"
    assert logged.data.params["resample.ratio"] == "1.0"
    assert logged.data.params["trainer.max_epochs"] == "2"

    names = [str(c) for c in range(10)]
    expected = {"train/loss", "val/loss", "val/accuracy", "val/balanced_accuracy", "val/macro_f1"}
    for stage in ("val", "test"):
        for kind in ("precision", "recall", "f1"):
            expected |= {f"{stage}/{kind}/{name}" for name in names}
    expected |= {"test/loss", "test/accuracy", "test/balanced_accuracy", "test/macro_f1"}
    assert expected <= set(logged.data.metrics)

    history = client.get_metric_history(result.run_id, "val/macro_f1")
    assert sorted(m.step for m in history) == [0, 1]
    assert logged.data.metrics["val/macro_f1"] == pytest.approx(result.metrics["val/macro_f1"])

    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "class_counts.json", "val", "test"} <= artifacts
    val_files = {a.path for a in client.list_artifacts(result.run_id, "val")}
    assert val_files == {"val/confusion_matrix.png", "val/confusion_matrix.json", "val/classification_report.json"}


def test_resampling_leaves_val_and_test_counts(make_cfg, tmp_path):
    cfg = make_cfg("resample=smote")
    result = run(cfg)
    client = MlflowClient(cfg.tracking.uri)
    counts = json.loads(read_artifact(client, result.run_id, "class_counts.json", tmp_path))
    splits = load_splits(cfg.data)

    assert counts["val"] == {str(c): n for c, n in enumerate(splits.val.class_counts(10))}
    assert counts["test"] == {str(c): n for c, n in enumerate(splits.test.class_counts(10))}
    assert set(counts["val"].values()) == {cfg.data.val_per_class}
    assert set(counts["test"].values()) == {cfg.data.test_per_class}
    assert counts["train"]["0"] == 124
    assert counts["train_resampled"] == {str(c): 124 for c in range(10)}
    # The confusion matrix of each split counts exactly that split's images.
    matrix = json.loads(read_artifact(client, result.run_id, "val/confusion_matrix.json", tmp_path))["matrix"]
    assert [sum(row) for row in matrix] == splits.val.class_counts(10)


def test_same_seed_repeats_exactly(make_cfg):
    first = run(make_cfg("trainer.max_epochs=2", "augment=mild", "resample=weighted_sampler"))
    second = run(make_cfg("trainer.max_epochs=2", "augment=mild", "resample=weighted_sampler"))
    assert first.metrics == second.metrics


def test_other_seed_changes_results(make_cfg):
    first = run(make_cfg("trainer.max_epochs=2", "seed=1"))
    second = run(make_cfg("trainer.max_epochs=2", "seed=2"))
    assert first.metrics["train/loss"] != second.metrics["train/loss"]


def test_resnet18_trains_on_npz(make_cfg, breastmnist_path):
    cfg = make_cfg("model=resnet18", "data=npz", f"data.path={breastmnist_path}", "data.class_names=[malignant,benign_or_normal]")
    result = run(cfg)
    assert {"val/recall/malignant", "test/recall/malignant", "test/f1/benign_or_normal"} <= set(result.metrics)
    assert result.test.confusion.sum() == 156


def test_failed_run_marked_failed(make_cfg):
    cfg = make_cfg()
    trial = optuna.create_study().ask()
    with pytest.raises(ConfigError):
        run(cfg, trial, objective="val/no_such_metric")
    client = MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "val/no_such_metric" in runs[0].data.tags["error"]


def test_trial_never_reads_test_split(make_cfg):
    trial = optuna.create_study().ask()
    result = run(make_cfg(), trial)
    assert result.test is None
    assert not any(key.startswith("test/") for key in result.metrics)


def test_posthoc_adjustment_changes_predictions_only(make_cfg):
    plain = run(make_cfg("trainer.max_epochs=3"))
    posthoc = run(make_cfg("trainer.max_epochs=3", "loss=logit_adjusted", "loss.posthoc=true", "loss.tau=1.0"))
    # Training is plain cross-entropy in both runs, so the training loss repeats exactly.
    assert posthoc.metrics["train/loss"] == plain.metrics["train/loss"]
    assert not (posthoc.val.confusion == plain.val.confusion).all()
    # Subtracting log priors moves predictions towards the rare digits: their recall cannot drop.
    assert posthoc.metrics["val/recall/9"] >= plain.metrics["val/recall/9"]


def test_ldam_drw_run_finishes(make_cfg):
    result = run(make_cfg("trainer.max_epochs=3", "loss=ldam", "loss.drw_start_epoch=2"))
    assert 0.0 <= result.metrics["val/macro_f1"] <= 1.0
    assert result.metrics["val/loss"] < 10  # scaled cosine logits give a real cross-entropy, not ~log(10) flat
