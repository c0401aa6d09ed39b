"""StepConfig: a step's options declared once, with the CLI flags, the proto request and the checks derived.

Every option is one pydantic field made with `option(...)`: its default, bounds (ge/gt/le/lt), --help text and
its *kind*:

    "wire"    sent in the step's gRPC request, in the field of the same name (or `proto=`);
    "layout"  a local path or the dataset name, filled in by whoever runs the step from its own layout;
    "local"   decided by whoever runs the step and never sent (workers, fold_index, ...).

From the fields come `add_arguments(parser)` (argparse flags: `--field-name` unless `flag=`, choices from
`Literal[...]`, bool -> store_true, `X | None` -> default None), `from_args` / `from_argv`, `to_proto` and
`from_proto` (a zero, unset or UNSPECIFIED request field keeps the default). Enums map by name: the proto enum value
whose name ends with the choice upper-cased, '-' -> '_' ("wgan-gp" <-> GAN_LOSS_WGAN_GP). A validation error is a
ConfigError naming the flag (CLI) or the request field (proto).
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ConfigError

Kind = Literal["wire", "layout", "local"]
KINDS: tuple[Kind, ...] = ("wire", "layout", "local")


def option(
    default: Any = ...,  # ...: required
    description: str = "",
    *,
    kind: Kind = "wire",
    flag: str | None = None,
    proto: str | None = None,
    **bounds: Any,
) -> Any:
    """A step option: `Field(default, description=..., **bounds)` with its kind, and its CLI flag / request field
    where they differ from `--field-name` / `field_name`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    extra: dict[str, Any] = {"kind": kind}
    if flag is not None:
        extra["flag"] = flag
    if proto is not None:
        extra["proto"] = proto
    return Field(default, description=description, json_schema_extra=extra, **bounds)


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None is allowed)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return annotation, False


def choices_of(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a `Literal[...]` (inside `| None` too); None for any other type."""
    inner, _ = _strip_optional(annotation)
    return typing.get_args(inner) if typing.get_origin(inner) is Literal else None


class StepConfig(BaseModel):
    """Base of the step configs (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # The gRPC request the wire fields travel in (None: the step has no request).
    request_type: ClassVar[type[Message] | None] = None
    # Request fields that are not options: where inputs and outputs are stored, filled in by the runner.
    request_only: ClassVar[frozenset[str]] = frozenset()

    # ---- field metadata

    @classmethod
    def _extra(cls, name: str) -> dict[str, Any]:
        extra = cls.model_fields[name].json_schema_extra
        return extra if isinstance(extra, dict) else {}

    @classmethod
    def kind(cls, name: str) -> Kind:
        return cls._extra(name).get("kind", "wire")

    @classmethod
    def fields_of(cls, kind: Kind) -> list[str]:
        """The names of the fields of one kind, in declaration order."""
        return [name for name in cls.model_fields if cls.kind(name) == kind]

    @classmethod
    def flag(cls, name: str) -> str:
        """The field's CLI flag."""
        return cls._extra(name).get("flag") or "--" + name.replace("_", "-")

    @classmethod
    def proto_name(cls, name: str) -> str:
        """The request field a wire field travels in."""
        return cls._extra(name).get("proto") or name

    # ---- validation

    @classmethod
    def _validated(cls, values: Mapping[str, Any], names: Mapping[str, str]) -> Any:
        """cls(**values); ValidationError -> ConfigError naming the option as `names` calls it."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                loc = error.get("loc") or ()
                message = error["msg"].removeprefix("Value error, ")
                if loc and loc[0] in cls.model_fields:
                    name = names.get(str(loc[0]), str(loc[0]))
                    got = "" if "got" in message else f", got {error.get('input')!r}"
                    problems.append(f"{name}: {message[:1].lower()}{message[1:]}{got}")
                elif loc:
                    problems.append(f"{loc[0]}: {message}")
                else:
                    problems.append(message)
            raise ConfigError("; ".join(problems)) from None

    # ---- the command line

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field (defaults shown in --help)."""
        for name, info in cls.model_fields.items():
            inner, optional = _strip_optional(info.annotation)
            kwargs: dict[str, Any] = {"dest": name, "help": info.description or ""}
            required = info.is_required()
            if inner is bool:
                kwargs["action"] = "store_true"
            else:
                choices = choices_of(inner)
                if choices is not None:
                    kwargs.update(choices=choices, type=type(choices[0]))
                else:
                    kwargs["type"] = inner if inner in (int, float) else str
                if required:
                    kwargs["required"] = True
                else:
                    kwargs["default"] = info.default
                    if info.default is not None:
                        kwargs["help"] += " (default: %(default)s)"
                    elif optional:
                        kwargs["default"] = None
            if not required and inner is bool:
                kwargs["default"] = info.default
            parser.add_argument(cls.flag(name), **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Any:
        """The config of a parsed command line (attributes that are not fields, like `command`, are ignored)."""
        values = {name: getattr(args, name) for name in cls.model_fields if hasattr(args, name)}
        return cls._validated(values, {name: cls.flag(name) for name in cls.model_fields})

    @classmethod
    def parser(cls, **defaults: Any) -> argparse.ArgumentParser:
        """An ArgumentParser for this config whose errors are ConfigErrors; `defaults` override the fields'."""
        parser = _RaisingParser(add_help=False)
        cls.add_arguments(parser)
        unknown = set(defaults) - set(cls.model_fields)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no option(s) {', '.join(sorted(unknown))}")
        parser.set_defaults(**defaults)
        for action in parser._actions:  # a default given here satisfies a required flag
            if action.dest in defaults:
                action.required = False
        return parser

    @classmethod
    def from_argv(cls, argv: Sequence[str], **defaults: Any) -> Any:
        """The config of a flag list: `defaults` replace the fields' defaults, flags in `argv` win over both."""
        return cls.from_args(cls.parser(**defaults).parse_args(list(argv)))

    def to_argv(self) -> list[str]:
        """Flags that give this config back through from_argv (every field; None and False fields left out)."""
        argv: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None or value is False:
                continue
            argv += [type(self).flag(name)] if value is True else [f"{type(self).flag(name)}={value}"]
        return argv

    # ---- the gRPC request

    @classmethod
    def _request_field(cls, message: Message, name: str) -> Any:
        proto_name = cls.proto_name(name)
        descriptor = message.DESCRIPTOR.fields_by_name.get(proto_name)
        if descriptor is None:
            raise ConfigError(f"{message.DESCRIPTOR.full_name} has no field {proto_name} for {cls.flag(name)}")
        return descriptor

    def to_proto(self, message: Message) -> Message:
        """Fill every wire field into the request `message` (None leaves an optional field unset); return it."""
        for name in type(self).fields_of("wire"):
            value = getattr(self, name)
            descriptor = type(self)._request_field(message, name)
            if value is None:
                message.ClearField(descriptor.name)
                continue
            if descriptor.enum_type is not None:
                value = _enum_number(descriptor.enum_type, value)
            setattr(message, descriptor.name, value)
        return message

    @classmethod
    def from_proto(cls, message: Message, **layout_and_local: Any) -> Any:
        """The config of a request plus the runner's own values (those win); an unset or zero field keeps its
        default. ConfigError naming the request field of a value that cannot work."""
        values: dict[str, Any] = {}
        names = {name: cls.proto_name(name) for name in cls.model_fields}
        for name in cls.fields_of("wire"):
            descriptor = cls._request_field(message, name)
            if descriptor.has_presence and not message.HasField(descriptor.name):
                continue
            value = getattr(message, descriptor.name)
            if descriptor.enum_type is not None:
                if value == 0:
                    continue
                value = _enum_choice(
                    descriptor.enum_type, value, descriptor.name, choices_of(cls.model_fields[name].annotation)
                )
            elif not descriptor.has_presence and not value:
                continue
            values[name] = value
        unknown = set(layout_and_local) - set(cls.model_fields)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no option(s) {', '.join(sorted(unknown))}")
        values.update(layout_and_local)
        return cls._validated(values, names)


class _RaisingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ConfigErrors instead of exiting the process."""

    def error(self, message: str) -> Any:  # argparse's signature says NoReturn; raising satisfies it
        raise ConfigError(message)


def _enum_suffix(choice: Any) -> str:
    return "_" + str(choice).upper().replace("-", "_")


def _enum_number(enum: Any, choice: Any) -> int:
    """The number of the enum value whose name ends with the choice."""
    for value in enum.values:
        if value.number != 0 and value.name.endswith(_enum_suffix(choice)):
            return value.number
    raise ConfigError(f"{enum.full_name} has no value for {choice!r}")


def _enum_choice(enum: Any, number: int, field: str, choices: tuple[Any, ...] | None) -> Any:
    """The choice an enum number stands for; ConfigError naming `field` for an unknown number."""
    value = enum.values_by_number.get(number)
    if value is not None:
        for choice in choices or ():
            if value.name.endswith(_enum_suffix(choice)):
                return choice
    raise ConfigError(f"{field}: unknown value {number}")
