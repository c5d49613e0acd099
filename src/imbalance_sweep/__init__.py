"""Sweep augmentation, cost-sensitive losses and resampling for CNNs on class-imbalanced images."""

import os

# MLflow sends usage telemetry unless it is disabled. Sweeps often run on clusters without internet, and
# nothing in this project should call outside the machine, so it is off unless the user set it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__version__ = "0.1.0"
