#!/usr/bin/env bash
# Short checks of the CUDA paths (autocast, float16 scaler, per-worker GPUs); run on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true
python=.venv/bin/python
out=$(mktemp -d)
store=(tracking.uri=sqlite:///$out/mlflow.db tracking.artifact_root=$out/artifacts)

"$python" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())'
"$python" -m imbalance_sweep.train trainer.device=cuda model=resnet18 trainer.max_epochs=3 "${store[@]}"
"$python" -m imbalance_sweep.train trainer.device=cuda trainer.amp=false trainer.max_epochs=3 "${store[@]}"
"$python" -m imbalance_sweep.sweep sweep.n_trials=4 sweep.n_workers=2 sweep.storage=$out/optuna.journal trainer.max_epochs=3 "${store[@]}"
"$python" - "$out" <<'PY'
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
runs = client.search_runs([client.get_experiment_by_name("imbalance-sweep").experiment_id])
devices = {r.data.tags.get("device") for r in runs}
print("devices used:", devices)
assert all(d and d.startswith("cuda") for d in devices), devices
assert {r.info.status for r in runs} == {"FINISHED"}
print("gpu check passed")
PY
rm -rf "$out"
