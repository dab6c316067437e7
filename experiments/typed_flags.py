"""Typed absl flags from a table, for the runner (experiments.main) and the labeling CLI
(experiments.label), so a setting shared by both is one flag with one type and one help text.

    parsers = define({"epochs": (int, "Main-task epochs per cycle.")})
    values = given(flags.FLAGS, parsers, ConfigError)    # {"epochs": 3} for --epochs=3
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from absl import flags

__all__ = ["define", "given"]


def _ints(values) -> tuple[int, ...]:
    return tuple(int(x) for x in values)


def _floats(values) -> tuple[float, ...]:
    return tuple(float(x) for x in values)


def _strs(values) -> tuple[str, ...]:
    return tuple(x.strip() for x in values)


# What the list parsers expect, for the one-line error of a bad value.
_EXPECTED = {_ints: "comma-separated integers", _floats: "comma-separated numbers"}
_DEFINES = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
}


def define(table: Mapping[str, tuple[Any, str]]) -> dict[str, Callable]:
    """Defines one absl flag per entry, name -> (type, help), default None (not given); the
    type is X, X | None or tuple[X, ...] (a comma-separated list). Returns name -> parser of
    the flag's value."""
    parsers = {}
    for name, (kind, help_text) in table.items():
        if isinstance(kind, types.UnionType):  # X | None
            (kind,) = (a for a in typing.get_args(kind) if a is not type(None))
        if typing.get_origin(kind) is tuple:
            flags.DEFINE_list(name, None, help_text)
            parse = {int: _ints, float: _floats, str: _strs}[typing.get_args(kind)[0]]
        else:
            _DEFINES[kind](name, None, help_text)
            parse = kind
        parsers[name] = parse
    return parsers


def given(flag_values, parsers: Mapping[str, Callable], error: type[Exception]) -> dict[str, Any]:
    """The parsed values of the flags of `parsers` given on the command line; a value that
    does not parse raises `error` with one sentence naming the flag."""
    out = {}
    for name, parse in parsers.items():
        value = flag_values[name].value
        if value is None:
            continue
        try:
            out[name] = parse(value)
        except ValueError:
            shown = ",".join(value) if isinstance(value, list) else value
            if parse in _EXPECTED:
                raise error(f"--{name} must be {_EXPECTED[parse]}, got {shown!r}") from None
            raise error(f"--{name}={shown!r} is not valid") from None
    return out
