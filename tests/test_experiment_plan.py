"""The experiment's profiles only use flags the subcommands really have, and keep evaluation data clean."""

import pytest

from pipeline.cli import build_parser
from pipeline.in_process import plan
from pipeline.profiles import PROFILES, STRATEGY_FLAGS


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_step_of_every_profile_parses(profile):
    parser = build_parser()
    args = parser.parse_args(["experiment", "--profile", profile, "--data-dir", "/data", "--work-dir", "/w"])
    steps = plan(args)
    assert [name for name, _ in steps][:2] == ["train-gan", "generate-synthetic"]
    assert steps[-1][0] == "analyze-results"
    for name, argv in steps:
        parsed = parser.parse_args(argv)  # SystemExit here means the profile names a flag that does not exist
        assert parsed.command == argv[0], name


def test_strategies_differ_only_in_synthetic_flags():
    parser = build_parser()
    args = parser.parse_args(["experiment", "--data-dir", "/data", "--work-dir", "/w"])
    parsed = {name: parser.parse_args(argv) for name, argv in plan(args) if name.startswith("train-classifier")}
    assert len(parsed) == len(STRATEGY_FLAGS)
    base = vars(parsed["train-classifier (baseline)"])
    assert base["use_synthetic"] is False and base["use_curriculum"] is False
    curriculum = vars(parsed["train-classifier (curriculum)"])
    assert curriculum["use_synthetic"] and curriculum["use_curriculum"]
    differing = {key for key in base if key not in ("handler", "parser") and base[key] != curriculum[key]}
    assert differing == {"use_synthetic", "use_curriculum"}
