"""Bad input on the command line: one `error:` line naming the value and the fix, exit status 2, no traceback."""

import os
import subprocess
import sys

import numpy as np
import pytest


def run_train(tmp_path, *arguments):
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [
        sys.executable, "-m", "imbalance_sweep.train", "trainer.max_epochs=1",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/artifacts", *arguments,
    ]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def write_npz(path, train_counts, **drop):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, counts in (("train", train_counts), ("val", [3, 3]), ("test", [3, 3])):
        labels = np.repeat(np.arange(len(counts)), counts)
        arrays[f"{split}_images"] = rng.integers(0, 255, size=(len(labels), 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    for key in drop:
        arrays.pop(key)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["data=npz", "data.path=missing.npz"], "missing.npz"),
        (["data=imagefolder", "data.path=no_such_dir"], "no_such_dir"),
        (["loss=dice"], "dice"),
        (["resample=tomek"], "tomek"),
        (["model=vit"], "vit"),
        (["-m", "loss=ce,dice"], "dice"),
        (["loss.name=dice"], "loss.name"),
        (["resample=random_over", "resample.ratio=1.5"], "resample.ratio"),
        (["resample=smote", "resample.ratio=0"], "resample.ratio"),
        (["resample=hybrid", "resample.over_ratio=0.8", "resample.under_ratio=0.5"], "under_ratio"),
        (["trainer.device=tpu"], "tpu"),
        (["trainer.max_epoch=3"], "trainer.max_epochs"),  # the message suggests the right key
        (["los=focal"], "loss"),
        (["-m", "loss=ce,focal", "loss.gamma=2"], "loss=ce"),
        (["loss=weighted_ce", "loss.weights=inverce"], "loss.weights=inverse"),
        (["optim.lr=abc"], "optim.lr"),
    ],
)
def test_bad_config_one_line(tmp_path, arguments, named):
    result = run_train(tmp_path, *arguments)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert named in lines[0]


def test_npz_missing_keys_named(tmp_path):
    path = write_npz(tmp_path / "partial.npz", [5, 5], val_labels=True)
    result = run_train(tmp_path, "data=npz", f"data.path={path}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "val_labels" in result.stderr


def test_smote_class_too_small_named(tmp_path):
    path = write_npz(tmp_path / "tiny.npz", [20, 1])
    result = run_train(tmp_path, "data=npz", f"data.path={path}", "data.class_names=[common,rare]", "resample=smote")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "'rare'" in result.stderr
    assert "resample=smote" in result.stderr
