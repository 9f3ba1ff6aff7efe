"""How a fit proceeds epoch by epoch: the learning-rate schedule and the time budget."""

from __future__ import annotations

import math
import time
from typing import Any

import keras

from training.model import TrainConfig

__all__ = ["Plan"]


class Plan(keras.callbacks.Callback):  # type: ignore[misc]
    """Sets the learning rate before every batch and ends the fit when its epochs are done.

    With a budget (max_minutes), the pace so far decides how many epochs fit; the one-cycle
    schedule is planned over those, so the model still ends on a small rate.
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int, verbose: int) -> None:
        super().__init__()
        self.config, self.steps_per_epoch, self.verbose = config, steps_per_epoch, verbose
        self.epochs = config.epochs
        self.rates: list[float] = []  # the rate at the end of each epoch
        self.stopped = ""  # why the fit ended before config.epochs, if it did
        self._step = 0
        self._started = 0.0

    def rate(self, step: int) -> float:
        """One-cycle: linear warm-up over the first epoch, then a cosine down to 0."""
        peak, warmup = self.config.learning_rate, self.steps_per_epoch
        if step < warmup:
            return peak * (step + 1) / warmup
        total = max(1, self.epochs * self.steps_per_epoch - warmup)
        return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / total)))

    def on_train_begin(self, logs: Any = None) -> None:
        self._started = time.perf_counter()

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if self.config.schedule == "one_cycle":
            self.model.optimizer.learning_rate.assign(self.rate(self._step))
        self._step += 1

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.rates.append(float(self.model.optimizer.learning_rate))
        done, elapsed = epoch + 1, time.perf_counter() - self._started
        budget = self.config.max_minutes * 60
        # Re-planned after every epoch, at the mean pace so far (this machine's speed varies):
        # the plan only shrinks, so the rate only goes down.
        fits = max(done, int(budget // (elapsed / done))) if budget else self.epochs
        if fits < self.epochs:
            self.epochs = fits
            self.stopped = (
                f"time budget: {self.config.max_minutes:g} min fit {fits} of "
                f"{self.config.epochs} epochs ({elapsed / done:.0f} s each)"
            )
            self._say(self.stopped)
        if done >= self.epochs:
            self.model.stop_training = True
        self._say(f"epoch {done}/{self.epochs}: {elapsed / 60:.1f} min so far")

    def _say(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)
