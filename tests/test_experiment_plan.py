"""The experiment's plan: profiles only set options the step configs have, each step's argv parses to the same
config, and evaluation data stays clean."""

import pytest

from pipeline.cli import build_parser
from pipeline.plan import plan
from pipeline.profiles import PROFILES, STEP_CONFIGS, STRATEGIES


def experiment_args(*argv: str):
    """The experiment's args; --synthesize names a class, as /data holds no dataset to count (argv may override)."""
    base = ["experiment", "--data-dir", "/data", "--work-dir", "/w", "--synthesize", "normal"]
    return build_parser(["experiment"]).parse_args([*base, *argv])


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profiles_set_valid_options_and_no_paths(profile: str) -> None:
    for step, config in STEP_CONFIGS.items():
        values = dict(PROFILES[profile].defaults(step))
        assert set(values) <= set(config.model_fields), step
        assert not set(values) & set(config.fields_of("layout")), f"{step}: paths and dataset are the driver's"
        assert not set(values) & {name for switches in STRATEGIES.values() for name in switches}
        parsed = config.from_argv([], **values, **({"model_path": "-"} if step == "generate" else {}))
        assert {name: getattr(parsed, name) for name in values} == values  # validated, kept as given


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_step_of_every_profile_parses(profile: str) -> None:
    parser = build_parser()
    steps = plan(experiment_args("--profile", profile))
    assert [step.name for step in steps][:2] == ["train-gan", "generate-synthetic"]
    assert steps[-1].name == "analyze-results"
    for step in steps:
        parsed = parser.parse_args(step.argv)  # SystemExit here means the argv names a flag that does not exist
        assert parsed.command == step.command, step.name
        assert type(step.config).from_argv(step.argv[1:]) == step.config, step.name  # the argv gives it back


def test_the_quick_profile_reaches_the_argv() -> None:
    gan = next(step for step in plan(experiment_args("--seed", "4", "--cpu")) if step.step == "gan")
    assert gan.argv[0] == "train-gan"
    assert {"--image-size=32", "--epochs=8", "--workers=0", "--seed=4", "--cpu", "--model-dir=/w/models"} <= set(
        gan.argv
    )


def test_strategies_differ_only_in_synthetic_flags():
    parser = build_parser(["train-classifier"])
    parsed = {step.name: parser.parse_args(step.argv) for step in plan(experiment_args()) if step.step == "classifier"}
    assert len(parsed) == len(STRATEGIES)
    base = vars(parsed["train-classifier (baseline)"])
    assert base["use_synthetic"] is False and base["use_curriculum"] is False
    curriculum = vars(parsed["train-classifier (curriculum)"])
    assert curriculum["use_synthetic"] and curriculum["use_curriculum"]
    differing = {key for key in base if key not in ("handler", "parser") and base[key] != curriculum[key]}
    assert differing == {"use_synthetic", "use_curriculum"}


def test_repeats_train_every_strategy_once_per_seed() -> None:
    steps = [step for step in plan(experiment_args("--repeats", "3", "--seed", "7")) if step.step == "classifier"]
    assert len(steps) == 3 * len(STRATEGIES)
    assert steps[0].name == "train-classifier (baseline, repeat 1)"
    by_repeat: dict[int, set[int]] = {}
    for step in steps:
        by_repeat.setdefault(step.config.repeat, set()).add(step.config.seed)
    assert by_repeat == {0: {7}, 1: {8}, 2: {9}}  # paired by seed: one seed per repeat, for every strategy
    repeated = next(step for step in steps if step.config.repeat == 2)
    assert "--repeat=2" in repeated.argv
    assert repeated.config.for_repeat().results_dir == "/w/results/metrics/repeat-2"
    assert steps[0].config.for_repeat() is steps[0].config  # repeat 0 writes where a single run writes
    gan = next(step for step in plan(experiment_args("--repeats", "3", "--seed", "7")) if step.step == "gan")
    assert gan.config.seed == 7  # one GAN and one synthetic pool for every repeat
