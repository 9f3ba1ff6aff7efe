"""Publish a fitted model as a new version (files, metadata.json, report); `train` fits first."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from convserve import artifact
from convserve.artifact import KERAS_FILE, FileEntry, Metadata
from training.export import versions, write_served_form
from training.layers import describe_layers
from training.model import TrainConfig
from training.report import REPORT_DIR, class_figures, write_report
from training.train import TrainResult, fit

__all__ = ["build_metadata", "export", "train"]


def build_metadata(
    result: TrainResult, name: str, version: int, files: list[FileEntry]
) -> Metadata:
    """The self-description a server needs to serve the model and a person needs to trust it."""
    config = result.config
    evaluation: dict[str, Any] = {
        "test_accuracy": result.test_accuracy,
        "test_loss": result.test_loss,
        "test_examples": result.test_examples,
    }
    if result.test_labels is not None and result.test_probabilities is not None:
        predicted = result.test_probabilities.argmax(axis=1)
        evaluation |= class_figures(result.test_labels, predicted, result.class_names)
    return Metadata.new(
        name=name,
        version=version,
        classes=result.class_names,
        input_shape=tuple(config.model.input_shape),
        preprocessing=result.preprocessing,
        files=files,
        layers=describe_layers(result.model),
        parameters=int(result.model.count_params()),
        framework=versions(),
        origin={"kind": "trained", "data": result.data_source},
        training={
            "config": config.to_dict(),
            "seed": config.seed,
            "train_examples": result.train_examples,
            "data_source": result.data_source,
            "fit_seconds": round(result.fit_seconds, 3),
            "epochs_run": result.epochs_run,
            "stopped": result.stopped,
            "best_epoch": result.best_epoch,
            "history": result.history,
        },
        evaluation=evaluation,
    )


def export(
    result: TrainResult, models_dir: str | os.PathLike[str], name: str, *, report: bool = True
) -> Path:
    """Publish models/<name>/<version>/ (the next integer version) and return its path; with
    `report`, also the evaluation report in its report/ directory (see training.report)."""

    files: list[FileEntry] = []
    test_images = result.test_images
    assert test_images is not None, "the served graphs are checked on the test images"

    def build(directory: Path, version: int) -> Metadata:
        if not files:  # not on a second try, after another export took the version
            result.model.save(directory / KERAS_FILE)
            files.append(FileEntry.of(directory / KERAS_FILE))
            files.extend(
                write_served_form(result.model, directory, result.preprocessing, test_images)
            )
        metadata = build_metadata(result, name, version, files)
        if report:
            write_report(result, directory / REPORT_DIR, metadata)
        return metadata

    return artifact.publish(models_dir, name, build)


def train(
    config: TrainConfig,
    *,
    name: str,
    models_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    verbose: int | None = None,
    report: bool = True,
) -> tuple[Path, TrainResult]:
    """Fit, evaluate and export; returns the new version's directory and the fit's figures."""
    artifact.check_name(name)
    result = fit(config, data_dir=data_dir, verbose=verbose)
    return export(result, models_dir, name, report=report), result
