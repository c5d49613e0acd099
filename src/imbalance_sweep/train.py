"""One training run: `run(cfg, trial)` and the `python -m imbalance_sweep.train` entry point.

A plain run and a sweep trial call the same `run`, so the same config gives the same numbers.
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field

import hydra
import optuna
import torch
from omegaconf import DictConfig, OmegaConf

from imbalance_sweep.augment import BatchAugmenter, build_augmenter
from imbalance_sweep.cli import check_command_line, exit_on_config_error
from imbalance_sweep.config import CONF_DIR, flatten, validate
from imbalance_sweep.data import ImageSplits, load_splits
from imbalance_sweep.engine import Precision, epoch_batches, predict, resolve_device, seed_everything, train_one_epoch
from imbalance_sweep.errors import ConfigError
from imbalance_sweep.losses import build_loss
from imbalance_sweep.metrics import Evaluation, evaluate_predictions
from imbalance_sweep.models import build_model
from imbalance_sweep.report import display_uri, format_class_table
from imbalance_sweep.resample import resample_train
from imbalance_sweep.tracking import TrackedRun, Tracker

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Final metrics with stage prefixes (`val/macro_f1`, `test/recall/<class>`) and the MLflow run id."""

    run_id: str
    metrics: dict[str, float]
    val: Evaluation
    test: Evaluation | None = None
    class_names: list[str] = field(default_factory=list)


def run(
    cfg: DictConfig,
    trial: optuna.Trial | None = None,
    *,
    tracked_run: TrackedRun | None = None,
    objective: str = "val/macro_f1",
    evaluate_test: bool | None = None,
    log_params: bool = True,
) -> RunResult:
    """Train and evaluate one configuration and log it to MLflow.

    With `trial`, the `objective` metric is reported to Optuna after every epoch and the run stops with
    `optuna.TrialPruned` when the pruner decides to prune. With `tracked_run`, metrics go into that open run and
    the caller closes it; otherwise a new run is created from `cfg.tracking` and closed here.
    `evaluate_test` defaults to `trainer.evaluate_test` for plain runs and is always off for trials:
    the test split is never read by a search objective.
    """
    validate(cfg)
    if evaluate_test is None:
        evaluate_test = trial is None and bool(cfg.trainer.evaluate_test)
    if trial is not None and evaluate_test:
        raise ValueError("a sweep trial must not evaluate the test split")

    seed_everything(cfg.seed)
    device = resolve_device(str(cfg.trainer.device))
    splits = load_splits(cfg.data)
    resampled = resample_train(splits.train, cfg.resample, splits.class_names, cfg.seed, cfg.trainer.max_epochs)
    log.info(
        "resample=%s: train class counts %s -> %s", cfg.resample.name,
        dict(zip(splits.class_names, splits.train.class_counts(splits.num_classes))), dict(zip(splits.class_names, resampled.class_counts)),
    )

    cosine_head = bool(cfg.loss.get("normalize_head", False))
    model = build_model(cfg.model, splits.channels, splits.num_classes, splits.image_size, cosine_head).to(device)
    loss_fn = build_loss(cfg.loss, resampled.class_counts).to(device)
    augmenter = build_augmenter(cfg.augment, splits.train.class_counts(splits.num_classes), cfg.seed)
    if splits.channels == 1 and (cfg.augment.get("saturation", 0) > 0 or cfg.augment.get("hue", 0) > 0):
        log.warning("augment.saturation and augment.hue have no effect on single-channel images")
    optimizer = _build_optimizer(cfg.optim, model)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.trainer.max_epochs) if cfg.optim.scheduler == "cosine" else None
    precision = Precision(device, bool(cfg.trainer.amp))
    prepare_train, prepare_eval = _input_pipeline(splits, augmenter, device, cfg.seed)

    owns_run = tracked_run is None
    if owns_run:
        tracked_run = Tracker(cfg.tracking).start_run(_run_name(cfg))
    with tracked_run if owns_run else nullcontext(tracked_run):
        if log_params:
            tracked_run.log_params(flatten(cfg))
        tracked_run.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        tracked_run.log_dict(_class_counts(splits, resampled.class_counts), "class_counts.json")
        tracked_run.set_tags({"device": str(device)})

        train_images = resampled.split.images.to(device)
        train_labels = resampled.split.labels.to(device)
        val_images, val_labels = splits.val.images.to(device), splits.val.labels.to(device)
        shuffle = torch.Generator().manual_seed(cfg.seed)

        for epoch in range(cfg.trainer.max_epochs):
            weights = resampled.sample_weights(epoch) if resampled.sample_weights else None
            batches = epoch_batches(len(train_labels), cfg.trainer.batch_size, shuffle, weights)
            loss_fn.set_epoch(epoch)
            train_loss = train_one_epoch(model, train_images, train_labels, batches, loss_fn, optimizer, prepare_train, precision, epoch)
            if scheduler is not None:
                scheduler.step()

            val, val_loss = _evaluate(model, val_images, val_labels, prepare_eval, precision, loss_fn, splits.class_names)
            metrics = {"train/loss": train_loss, "val/loss": val_loss, **_prefixed("val", val.metrics)}
            tracked_run.log_metrics(metrics, step=epoch)
            log.log(
                logging.INFO if trial is None else logging.DEBUG,
                "epoch %d/%d train/loss %.4f val/loss %.4f val/macro_f1 %.4f val/balanced_accuracy %.4f",
                epoch + 1, cfg.trainer.max_epochs, train_loss, val_loss, val.metrics["macro_f1"], val.metrics["balanced_accuracy"],
            )

            if trial is not None:
                if objective not in metrics:
                    raise ConfigError(f"sweep.metric {objective!r} is not a logged metric: use one of {sorted(metrics)}")
                trial.report(metrics[objective], epoch)
                if trial.should_prune():
                    log.info("trial %d pruned at epoch %d (%s %.4f)", trial.number, epoch + 1, objective, metrics[objective])
                    raise optuna.TrialPruned()

        _log_evaluation_artifacts(tracked_run, "val", val, splits.class_names)
        test = None
        if evaluate_test:
            test, test_loss = _evaluate(
                model, splits.test.images.to(device), splits.test.labels.to(device), prepare_eval, precision, loss_fn, splits.class_names
            )
            metrics.update({"test/loss": test_loss, **_prefixed("test", test.metrics)})
            tracked_run.log_metrics({"test/loss": test_loss, **_prefixed("test", test.metrics)}, step=cfg.trainer.max_epochs - 1)
            _log_evaluation_artifacts(tracked_run, "test", test, splits.class_names)

    return RunResult(tracked_run.run_id, metrics, val, test, splits.class_names)


def _build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optim.name {cfg.name!r}: use adamw or sgd")


def _input_pipeline(splits: ImageSplits, augmenter: BatchAugmenter, device: torch.device, seed: int):
    """Return the batch preparation for training and for evaluation.

    Training: policy augmentation on uint8, scale to [0, 1], per-sample transforms, Mixup or CutMix,
    standardise. Evaluation: scale and standardise only. Mean and standard deviation per channel come
    from the training split as loaded, before resampling, so synthetic or duplicated samples do not
    shift them.
    """
    pixels = splits.train.images.float().div(255)
    mean = pixels.mean(dim=(0, 2, 3)).view(1, -1, 1, 1).to(device)
    std = pixels.std(dim=(0, 2, 3)).clamp(min=1e-6).view(1, -1, 1, 1).to(device)
    generator = torch.Generator().manual_seed(seed + 1)

    def prepare_train(batch: torch.Tensor, labels: torch.Tensor):
        if not augmenter.enabled:
            return (batch.float().div(255) - mean) / std, None, None
        images = augmenter.apply_policy(batch, labels).float().div(255)
        images = augmenter(images, labels, generator)
        images, labels_b, lam = augmenter.mix(images, labels, generator)
        return (images - mean) / std, labels_b, lam

    def prepare_eval(batch: torch.Tensor) -> torch.Tensor:
        return (batch.float().div(255) - mean) / std

    return prepare_train, prepare_eval


def _evaluate(model, images, labels, prepare, precision, loss_fn, class_names) -> tuple[Evaluation, float]:
    predicted, loss = predict(model, images, labels, prepare, precision, loss_fn.prediction_logits)
    return evaluate_predictions(labels.cpu().numpy(), predicted, class_names), loss


def _prefixed(stage: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{stage}/{name}": value for name, value in metrics.items()}


def _class_counts(splits: ImageSplits, resampled_counts: list[int]) -> dict[str, dict[str, int]]:
    def by_name(counts: list[int]) -> dict[str, int]:
        return {name: int(n) for name, n in zip(splits.class_names, counts)}

    return {
        "train": by_name(splits.train.class_counts(splits.num_classes)),
        "train_resampled": by_name(resampled_counts),
        "val": by_name(splits.val.class_counts(splits.num_classes)),
        "test": by_name(splits.test.class_counts(splits.num_classes)),
    }


def _log_evaluation_artifacts(tracked_run: TrackedRun, stage: str, evaluation: Evaluation, class_names: list[str]) -> None:
    tracked_run.log_confusion_matrix(evaluation.confusion, class_names, stage)
    tracked_run.log_dict(evaluation.report, f"{stage}/classification_report.json")
    if evaluation.missing_classes:
        tracked_run.set_tags({f"{stage}/missing_classes": ",".join(evaluation.missing_classes)})


def _run_name(cfg: DictConfig) -> str:
    return f"{cfg.data.name}-{cfg.model.name}-{cfg.loss.name}-{cfg.resample.name}"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    with exit_on_config_error():
        result = run(cfg)
    print(format_class_table(result.metrics, result.class_names))
    print(f"MLflow run {result.run_id} in {display_uri(cfg.tracking.uri)}; browse it with `make ui`.")
    return result.metrics["val/macro_f1"]


if __name__ == "__main__":
    with exit_on_config_error():
        check_command_line(sys.argv[1:], "train")
    main()
