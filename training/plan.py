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

    With a budget (max_minutes), the first epoch's duration decides how many epochs fit; the
    one-cycle schedule is planned over those, so the model still ends on a small rate.
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
        elapsed = time.perf_counter() - self._started
        budget = self.config.max_minutes * 60
        done = epoch + 1
        if budget and done == 1 and int(budget // elapsed) < self.epochs:
            self.epochs = max(1, int(budget // elapsed))
            self.stopped = (
                f"time budget: {self.config.max_minutes:g} min fit {self.epochs} of "
                f"{self.config.epochs} epochs ({elapsed:.0f} s each)"
            )
            self._say(self.stopped)
        elif budget and done < self.epochs and elapsed / done * (done + 1) > budget:
            self.epochs = done  # the machine got slower than the first epoch promised
            self.stopped = f"time budget: {self.config.max_minutes:g} min ran out"
            self._say(self.stopped)
        if done >= self.epochs:
            self.model.stop_training = True
        if self.verbose:
            self._say(f"epoch {done}/{self.epochs}: {elapsed / 60:.1f} min so far")

    def _say(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)
