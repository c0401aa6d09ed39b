"""Reading numbers and choices from environment variables for the services' config objects: a clear ConfigError
naming the variable and what it accepts, never a silent default for a bad value."""

from __future__ import annotations

from collections.abc import Mapping

from shared.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")  # PNEUMONIA_<SERVICE>_DEVICE: auto = CUDA when there is one


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    """`env[name]` as an integer in [minimum, maximum]; `default` when unset."""
    value = env.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{name} must be an integer {bounds}, got {value!r}")
    return number


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    """`env[name]` as a number >= minimum (nan refused); `default` when unset."""
    value = env.get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or not number >= minimum:  # `not >=` also rejects nan
        raise ConfigError(f"{name} must be a number >= {minimum}, got {value!r}")
    return number


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """ConfigError unless `value` (of the variable `name`) is one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
