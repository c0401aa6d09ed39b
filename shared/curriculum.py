"""Curriculum schedules: which share of an epoch's training samples is synthetic.

A schedule is written "0:0.0, 5:0.25, 10:0.5": from 0-based epoch 0 no synthetic images, from epoch 5 a quarter of
the samples, from epoch 10 on half of them (the seed's "0% for epochs 0-4, 25% for epochs 5-9, 50% after").
"""

from __future__ import annotations

from shared.errors import ConfigError

Schedule = list[tuple[int, float]]


def parse_schedule(text: str) -> Schedule:
    """Parse "epoch:ratio, ..." into [(epoch, ratio), ...]; ConfigError naming the bad entry."""
    schedule: Schedule = []
    for entry in text.split(","):
        entry = entry.strip()
        parts = entry.split(":")
        if len(parts) != 2:
            raise ConfigError(f"--curriculum-schedule: entry {entry!r} is not of the form EPOCH:RATIO (e.g. '5:0.25')")
        try:
            epoch, ratio = int(parts[0]), float(parts[1])
        except ValueError as exc:
            raise ConfigError(
                f"--curriculum-schedule: entry {entry!r} needs an integer epoch and a numeric ratio"
            ) from exc
        if epoch < 0:
            raise ConfigError(f"--curriculum-schedule: epoch {epoch} in {entry!r} is negative (epochs count from 0)")
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"--curriculum-schedule: ratio {ratio} in {entry!r} must be in [0, 1)")
        if schedule and epoch <= schedule[-1][0]:
            raise ConfigError(
                f"--curriculum-schedule: epoch {epoch} in {entry!r} must come after epoch {schedule[-1][0]} "
                "(epochs must be increasing, each listed once)"
            )
        schedule.append((epoch, ratio))
    if schedule[0][0] != 0:
        raise ConfigError("--curriculum-schedule: the first entry must be for epoch 0 (e.g. '0:0.0, 5:0.25')")
    return schedule


def ratio_at(schedule: Schedule, epoch: int) -> float:
    """The synthetic share in force at 0-based `epoch`: that of the last entry at or before it."""
    return [ratio for start, ratio in schedule if start <= epoch][-1]


def synthetic_count(ratio: float, n_real: int, pool_size: int) -> int:
    """How many synthetic samples make them `ratio` of an epoch with `n_real` real ones, capped at the pool size:
    s / (s + n_real) = ratio  =>  s = ratio / (1 - ratio) * n_real."""
    return min(pool_size, round(ratio / (1.0 - ratio) * n_real))
