"""The services' settings: the base class of their pydantic-settings models, the value types they share, and the
text that documents them (`python -m services.<name> --help`, README's tables through scripts/settings_docs.py).

Every field of a model is one environment variable: its name (the field's alias, PNEUMONIA_*), type, bounds or
choices, default and meaning (the field's description) are declared once, on the field. An empty variable counts as
unset. A bad value is a ConfigError naming the variable and what it accepts; secrets (SecretStr) never appear in a
repr, a log or an error.
"""

from __future__ import annotations

import os
import textwrap
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin

import annotated_types
from pydantic import Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from shared.errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]  # PNEUMONIA_<SERVICE>_DEVICE: auto = CUDA when there is one
Port = Annotated[int, Field(ge=0, le=65535)]  # 0: any free port


def setting(
    default: Any = ...,
    description: str = "",
    *,
    env: str | None = None,
    shown_default: str | None = None,
    kind: str | None = None,
    from_env: bool = True,
    default_factory: Callable[[], Any] | None = None,
    **constraints: Any,
) -> Any:
    """A settings field. `env`: the variable when the model's prefix does not name it; `shown_default`: the default
    as the docs tell it when it is computed; `kind`: the type as the docs tell it; `from_env=False`: a field only a
    constructor sets (tests), never read from the environment and not documented."""
    extra = {"shown_default": shown_default, "kind": kind, "from_env": from_env}
    extra = {key: value for key, value in extra.items() if value is not None}
    if default_factory is not None:
        constraints["default_factory"] = default_factory
    else:
        constraints["default"] = default
    return Field(alias=env, description=description, json_schema_extra=extra, **constraints)


def comma_list(value: Any) -> Any:
    """A setting's "a, b,c" as ("a", "b", "c") (empty entries dropped); any other value as it is. For a
    field_validator(..., mode="before") of a tuple-valued setting."""
    return tuple(entry.strip() for entry in value.split(",") if entry.strip()) if isinstance(value, str) else value


def env_prefix(prefix: str) -> Callable[[str], str]:
    """An alias generator: field `grpc_port` -> variable `<prefix>GRPC_PORT`."""
    return lambda name: f"{prefix}{name.upper()}"


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source over `environ` instead of os.environ; skips fields not read from it."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str | None]) -> None:
        super().__init__(settings_cls)  # reads os.environ: replaced by `environ` below
        self.env_vars = {name: value for name, value in environ.items() if value}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if not reads_env(field):
            return None, field_name, False
        return super().get_field_value(field, field_name)


class Settings(BaseSettings):
    """Base of the services' settings models. `Model.from_env()` reads the environment (or a given mapping);
    `Model(field=value, ...)` takes only the values given and the defaults, never the environment (tests)."""

    model_config = SettingsConfigDict(
        case_sensitive=True, frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(describe_errors(type(self), exc)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the environment comes in through from_env only

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable of field `name`."""
        return env_name(cls.model_fields[name], name)

    @classmethod
    def env_values(cls, environ: Mapping[str, str | None] | None = None) -> dict[str, Any]:
        """{field name: value} of the variables set (non-empty) in `environ` (default os.environ)."""
        try:
            raw = _EnvironSource(cls, os.environ if environ is None else environ)()
        except SettingsError as exc:  # a value pydantic-settings could not decode (JSON of a list or dict field)
            raise ConfigError(str(exc)) from None
        names = {env_name(field, name): name for name, field in cls.model_fields.items()}
        return {names.get(key, key): value for key, value in raw.items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str | None] | None = None, **overrides: Any) -> Self:
        """The settings in `environ` (default os.environ), `overrides` winning; ConfigError naming a bad variable."""
        return cls(**{**cls.env_values(environ), **overrides})


# ---------------------------------------------------------------------------------------------- field introspection


def env_name(field: FieldInfo, name: str) -> str:
    """The variable a field is read from."""
    return field.alias or name


def reads_env(field: FieldInfo) -> bool:
    """False for a field declared with setting(from_env=False)."""
    extra = field.json_schema_extra
    return not isinstance(extra, dict) or extra.get("from_env", True) is not False


def env_fields(model: type[Settings]) -> dict[str, FieldInfo]:
    """{field name: field} of the model's fields read from the environment, in declaration order."""
    return {name: field for name, field in model.model_fields.items() if reads_env(field)}


def _extra(field: FieldInfo, key: str) -> Any:
    return field.json_schema_extra.get(key) if isinstance(field.json_schema_extra, dict) else None


def _value_type(field: FieldInfo) -> Any:
    """The field's type without `| None`."""
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    return annotation


def _bounds(field: FieldInfo) -> str:
    """'0-65535', '>= 1', '> 0' or '' from the field's constraints."""
    low = high = None
    strict = False
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            low = item.ge
        elif isinstance(item, annotated_types.Gt):
            low, strict = item.gt, True
        elif isinstance(item, annotated_types.Le):
            high = item.le
    if low is not None and high is not None:
        return f"{low}-{high}"
    if low is not None:
        return f"{'>' if strict else '>='} {low}"
    return f"<= {high}" if high is not None else ""


def is_secret(field: FieldInfo) -> bool:
    return _value_type(field) is SecretStr


def kind(field: FieldInfo) -> str:
    """The field's type as the docs tell it: 'integer 0-65535', 'auto | cpu | cuda', 'true | false', 'path', ..."""
    if _extra(field, "kind"):
        return _extra(field, "kind")
    value_type = _value_type(field)
    if get_origin(value_type) is Literal:
        return " | ".join(str(choice) for choice in get_args(value_type))
    if value_type is bool:
        return "true | false"
    if value_type in (int, float):
        return " ".join(filter(None, ["integer" if value_type is int else "number", _bounds(field)]))
    return {Path: "path", SecretStr: "secret", str: "text"}.get(value_type, getattr(value_type, "__name__", "text"))


def allowed(field: FieldInfo) -> str:
    """What a bad value of the field should have been: 'an integer between 0 and 65535', 'one of auto, cpu, cuda'."""
    value_type = _value_type(field)
    if get_origin(value_type) is Literal:
        return f"one of {', '.join(str(choice) for choice in get_args(value_type))}"
    if value_type is bool:
        return "true or false"
    if value_type in (int, float):
        noun = "an integer" if value_type is int else "a number"
        bounds = _bounds(field)
        if "-" in bounds:
            low, high = bounds.split("-")
            return f"{noun} between {low} and {high}"
        return " ".join(filter(None, [noun, bounds]))
    return f"a valid {kind(field)}"


def shown_default(field: FieldInfo) -> str:
    """The default as the docs tell it."""
    if _extra(field, "shown_default"):
        return _extra(field, "shown_default")
    value = field.get_default(call_default_factory=True)
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------------------------------------------------- errors


def describe_errors(model: type[Settings], exc: ValidationError) -> str:
    """One line per bad value, naming its variable and what it accepts; never a secret's value."""
    by_key = {key: (name, field) for name, field in model.model_fields.items() for key in (name, field.alias) if key}
    lines = []
    for error in exc.errors(include_url=False):
        cause = (error.get("ctx") or {}).get("error")
        if not error["loc"]:  # a check of several fields: its message names them
            lines.append(str(cause or error["msg"]))
            continue
        key = str(error["loc"][0])
        if key not in by_key:
            lines.append(f"{key}: {error['msg'].lower()}")
            continue
        name, field = by_key[key]
        variable = env_name(field, name)
        if cause is not None:  # one of our validators said what is wrong
            lines.append(f"{variable}: {cause}")
        elif is_secret(field):
            lines.append(f"{variable} must be {allowed(field)}")
        else:
            lines.append(f"{variable} must be {allowed(field)}, got {error['input']!r}")
    return "; ".join(lines)


# ------------------------------------------------------------------------------------------------------------ docs


def settings_help(*models: type[Settings], indent: int = 4, width: int = 116) -> str:
    """The models' variables for --help, each model under its name: a variable's name, type and default on one line,
    its meaning wrapped below."""
    pad = " " * indent
    lines = []
    for model in models:
        fields = env_fields(model)
        column = max(len(env_name(field, name)) for name, field in fields.items()) + 2
        lines += ["", f"{model.__name__}:"]
        for name, field in fields.items():
            head = f"{pad}{env_name(field, name):<{column}}{kind(field)}; default: {shown_default(field)}"
            lines += textwrap.wrap(head, width, subsequent_indent=" " * (indent + column), break_on_hyphens=False)
            lines += textwrap.wrap(
                field.description or "",
                width,
                initial_indent=pad * 2,
                subsequent_indent=pad * 2,
                break_on_hyphens=False,
            )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: characters Markdown would read as markup are escaped."""
    for char in "\\|<*":
        text = text.replace(char, "\\" + char)
    return text


def settings_markdown(model: type[Settings]) -> str:
    """The model's variables as a Markdown table: variable, type, default, meaning."""
    rows = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in env_fields(model).items():
        default = shown_default(field) if _extra(field, "shown_default") else f"`{shown_default(field)}`"
        cells = [f"`{env_name(field, name)}`", _cell(kind(field)), _cell(default), _cell(field.description or "")]
        rows.append(f"| {' | '.join(cells)} |")
    return "\n".join(rows) + "\n"
