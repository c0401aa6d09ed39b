"""Curriculum schedules: parsing, errors naming the bad entry, the ratio in force, synthetic sample counts."""

from __future__ import annotations

import pytest

from shared.curriculum import parse_schedule, ratio_at, synthetic_count
from shared.errors import ConfigError


def test_parse_seed_schedule() -> None:
    assert parse_schedule("0:0.0, 5:0.25, 10:0.5") == [(0, 0.0), (5, 0.25), (10, 0.5)]
    assert parse_schedule("0:0.3") == [(0, 0.3)]
    assert parse_schedule(" 0 : 0 ,2:.5 ") == [(0, 0.0), (2, 0.5)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "EPOCH:RATIO"),
        ("0:0.0, 5", "'5'"),
        ("0:0.0,, 5:0.2", "EPOCH:RATIO"),
        ("0:0.0, 5:0.2:1", "'5:0.2:1'"),
        ("0:zero", "numeric"),
        ("0:0, 1.5:0.2", "integer epoch"),
        ("0:0, 5:1.0", r"\[0, 1\)"),
        ("0:-0.1", r"\[0, 1\)"),
        ("0:0, -1:0.2", "negative"),
        ("0:0, 5:0.2, 5:0.3", "increasing"),
        ("0:0, 5:0.2, 3:0.3", "increasing"),
        ("1:0.2, 5:0.3", "epoch 0"),
    ],
)
def test_malformed_schedules_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="--curriculum-schedule") as error:
        parse_schedule(text)
    assert error.match(message)


def test_ratio_at_follows_zero_based_epochs() -> None:
    schedule = parse_schedule("0:0.0, 5:0.25, 10:0.5")
    assert [ratio_at(schedule, epoch) for epoch in range(12)] == [0.0] * 5 + [0.25] * 5 + [0.5] * 2
    assert ratio_at(schedule, 100) == 0.5


def test_synthetic_count_gives_the_ratio_and_respects_the_pool() -> None:
    # 25% of the epoch synthetic with 300 real: 100 synthetic (100 / 400 = 0.25).
    assert synthetic_count(0.25, 300, 1000) == 100
    assert synthetic_count(0.5, 300, 1000) == 300
    assert synthetic_count(0.0, 300, 1000) == 0
    assert synthetic_count(0.5, 300, 120) == 120  # capped at the pool
