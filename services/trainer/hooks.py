"""Hooks a caller (the trainer service) passes to a training entry point: progress after every epoch, and a stop check.

    train_gan.train(options, progress=on_epoch, should_stop=lambda: cancelled.is_set())
    train_classifier.train_strategy(options, progress=on_epoch, should_stop=lambda: cancelled.is_set())

`progress` runs after each epoch's resumable checkpoint is written (raising there stops the run, which can then be
resumed with --resume). `should_stop` is asked before every epoch, i.e. at the safe point after the previous
epoch's checkpoint; when it answers True, training raises TrainingStopped and the run stays resumable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.errors import PneumoniaError

Progress = Callable[[dict[str, Any]], None]
StopCheck = Callable[[], bool]


class TrainingStopped(PneumoniaError):
    """Training stopped at a safe point because it was asked to; rerun with --resume to continue."""


def stop_if_asked(should_stop: StopCheck | None, where: str) -> None:
    """Raise TrainingStopped (naming `where`) when `should_stop` says so."""
    if should_stop is not None and should_stop():
        raise TrainingStopped(f"training stopped {where} as asked; rerun with --resume to continue")
