"""The step configs: every field walked (nothing listed by hand) round-trips CLI <-> config <-> proto."""

from __future__ import annotations

import argparse
from typing import Any

import annotated_types
import pytest

from shared.configs import MAX_SEED, STEP_CONFIGS, GanTrainingConfig, GenerationConfig, StepConfig
from shared.configs.base import _strip_optional, choices_of
from shared.configs.limits import MAX_IMAGES
from shared.errors import ConfigError


def _candidates(cls: type[StepConfig], name: str) -> list[Any]:
    """Values other than the field's default to try, most telling first."""
    info = cls.model_fields[name]
    default = None if info.is_required() else info.default
    inner, _ = _strip_optional(info.annotation)
    choices = choices_of(info.annotation)
    if choices is not None:
        return [c for c in choices if c != default]
    if inner is bool:
        return [not default]
    if inner is int:
        base = default or 1
        return [base * 2, base + 1, 2, 3, 1, 16, 128]
    if inner is float:
        base = default or 0.5
        return [base / 2, base * 0.75, 0.5, 0.25, 0.9]
    if name == "curriculum_schedule":
        return ["0:0.1, 3:0.5"]
    if name == "operating_rule":
        return ["sensitivity:0.9", "youden"]
    if name == "shift_severities":
        return ["1,5", "none"]
    path = f"/tmp/{name}-x"
    return [path] if cls.kind(name) == "layout" else ["none", path]  # a wire string must be sendable


def non_default(cls: type[StepConfig]) -> StepConfig:
    """A valid config with every field away from its default (each field given the first candidate that keeps the
    whole config valid; switches first, as other options depend on them)."""
    values: dict[str, Any] = {
        n: _candidates(cls, n)[0] if f.is_required() else f.default for n, f in cls.model_fields.items()
    }
    for name in sorted(cls.model_fields, key=lambda n: cls.model_fields[n].annotation is not bool):
        for value in _candidates(cls, name):
            try:
                cls.model_validate({**values, name: value})
            except (ValueError, ConfigError):
                continue
            values[name] = value
            break
        else:
            pytest.fail(f"{cls.__name__}.{name}: no valid non-default value among {_candidates(cls, name)}")
    return cls.model_validate(values)


@pytest.mark.parametrize("cls", STEP_CONFIGS, ids=lambda c: c.__name__)
def test_every_field_round_trips_through_the_command_line(cls: type[StepConfig]) -> None:
    config = non_default(cls)
    for name, info in cls.model_fields.items():
        assert info.is_required() or getattr(config, name) != info.default, name
        assert info.description, f"{cls.__name__}.{name} has no --help text"
    assert cls.from_argv(config.to_argv()) == config
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    assert cls.from_args(parser.parse_args(config.to_argv())) == config


@pytest.mark.parametrize("cls", STEP_CONFIGS, ids=lambda c: c.__name__)
def test_every_field_round_trips_through_the_request(cls: type[StepConfig]) -> None:
    assert cls.request_type is not None
    config = non_default(cls)
    request = config.to_proto(cls.request_type())
    sent = {descriptor.name for descriptor, _ in request.ListFields()}
    assert sent == {cls.proto_name(name) for name in cls.fields_of("wire")}  # every wire field non-zero on the wire
    runner_side = {name: getattr(config, name) for name in cls.model_fields if cls.kind(name) != "wire"}
    assert cls.from_proto(cls.request_type.FromString(request.SerializeToString()), **runner_side) == config


@pytest.mark.parametrize("cls", STEP_CONFIGS, ids=lambda c: c.__name__)
def test_every_request_field_is_an_option_or_a_location(cls: type[StepConfig]) -> None:
    assert cls.request_type is not None
    request_fields = set(cls.request_type.DESCRIPTOR.fields_by_name)
    wire = {cls.proto_name(name) for name in cls.fields_of("wire")}
    assert wire <= request_fields, f"wire fields without a request field: {sorted(wire - request_fields)}"
    assert request_fields - wire == cls.request_only, "request fields that are neither options nor locations"
    assert not wire & cls.request_only


@pytest.mark.parametrize("cls", STEP_CONFIGS, ids=lambda c: c.__name__)
def test_an_empty_request_keeps_every_default(cls: type[StepConfig]) -> None:
    assert cls.request_type is not None
    required = {name: "x" for name, info in cls.model_fields.items() if info.is_required()}
    assert cls.from_proto(cls.request_type(), **required) == cls.model_validate(required)
    assert cls.from_argv([], **required) == cls.model_validate(required)


@pytest.mark.parametrize("cls", STEP_CONFIGS, ids=lambda c: c.__name__)
def test_a_bad_value_names_its_flag_and_its_request_field(cls: type[StepConfig]) -> None:
    assert "seed" in cls.fields_of("wire")
    required = [arg for name, info in cls.model_fields.items() if info.is_required() for arg in (cls.flag(name), "x")]
    with pytest.raises(ConfigError, match="--seed"):
        cls.from_argv([*required, f"--seed={MAX_SEED + 1}"])
    assert cls.request_type is not None
    layout = {name: "x" for name, info in cls.model_fields.items() if info.is_required()}
    with pytest.raises(ConfigError, match="^seed"):
        cls.from_proto(cls.request_type(seed=MAX_SEED + 1), **layout)


def test_defaults_given_to_from_argv_yield_to_flags() -> None:
    from shared.configs import ClassifierTrainingConfig

    config = ClassifierTrainingConfig.from_argv(["--epochs", "3"], epochs=2, k_folds=2)
    assert (config.epochs, config.k_folds) == (3, 2)


def test_every_integer_option_has_an_upper_bound() -> None:
    """Every count a request or a command line gives (epochs, images, sizes, folds, workers...) is bounded above
    (shared/configs/limits.py), so that no single request can run for ever or allocate without limit."""
    unbounded = [
        f"{cls.__name__}.{name}"
        for cls in STEP_CONFIGS
        for name, field in cls.model_fields.items()
        if _strip_optional(field.annotation)[0] is int
        and not any(isinstance(bound, annotated_types.Le | annotated_types.Lt) for bound in field.metadata)
    ]
    assert unbounded == []


def test_an_over_limit_option_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="epochs"):
        GanTrainingConfig(epochs=2**31 - 1)
    with pytest.raises(ValueError, match="num_images"):
        GenerationConfig(checkpoint="gan.pth", num_images=MAX_IMAGES + 1)
