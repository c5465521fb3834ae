"""Typed value checks shared by every stage that validates user input (scenario YAML, plugin knobs).

A check is `check(raw, where) -> value`: it returns the validated (possibly converted) value or
raises `Invalid(where, message)`, where `where` is a key path such as `inputs.window`. The
scenario loader (`harness.config.validate`, `harness.config.scenario`) re-exports these and turns
an `Invalid` into one line `FILE: KEY.PATH: what was expected`; plugins below the config stage
(input sources) use them for their own knobs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from harness.common.names import suggest

Check = Callable[[Any, str], Any]  # (raw value, key path) -> validated value, or raise Invalid


class Invalid(Exception):
    """One validation failure: `where` is the key path (or a file location), `message` the rest."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(where, message)
        self.where = where
        self.message = message


def show(value: Any, limit: int = 60) -> str:
    """`value` as one short line with its YAML type, e.g. `true (bool)`, `'fp61' (str)`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (bool)"
    kind = {dict: "a mapping", list: "a list"}.get(type(value))
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{kind} {text}" if kind else f"{text} ({type(value).__name__})"


def is_int(v: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An int or a finite float; bool is not a number here."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


MAX_INT = 2**53  # every int of a scenario: exact as a float and in JSON, fits int64 in parquet


def yaml_float(x: float) -> str:
    """`x` written so YAML 1.1 (PyYAML) reads it as a float: a dot in the mantissa and a signed
    exponent (`1.0e+6`, `1.0e-2`), or plain decimals (`0.01`, `1000000.0`)."""
    text = repr(float(x))
    if "e" not in text:
        return text if "." in text else text + ".0"
    mantissa, exponent = text.split("e")
    mantissa = mantissa if "." in mantissa else mantissa + ".0"
    return f"{mantissa}e{exponent if exponent[0] in '+-' else '+' + exponent}"


def float_hint(v: Any) -> str:
    """YAML 1.1 reads `1e-2` or `1.0e6` (no dot, or no exponent sign) as text; when a number was
    clearly meant, say how to write this one so that it reads as a number."""
    if not isinstance(v, str):
        return ""
    try:
        x = float(v)
    except ValueError:
        return ""
    if not math.isfinite(x):
        return ""
    return f"; YAML reads {v.strip()} as text, write {yaml_float(x)}"


def as_int(raw: Any, where: str, minimum: int | None = None, maximum: int = MAX_INT) -> int:
    """An int (bool not accepted) `>= minimum` and `<= maximum`."""
    desc = {None: "an int", 0: "an int >= 0", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
    if not is_int(raw) or (minimum is not None and raw < minimum):
        hint = ""
        if isinstance(raw, str) and float_hint(raw):
            try:
                hint = f"; YAML reads {raw.strip()} as text, write {int(float(raw))}"
            except (ValueError, OverflowError):
                hint = ""
        raise Invalid(where, f"expected {desc}, found {show(raw)}{hint}")
    if raw > maximum:
        raise Invalid(where, f"expected {desc} <= {maximum}, found {show(raw)}")
    return raw


def as_float(raw: Any, where: str, minimum: float | None = None, strict: bool = False) -> float:
    """A finite number (int accepted, bool not) `>= minimum`, or `> minimum` when `strict`."""
    desc = "a number" if minimum is None else f"a number {'>' if strict else '>='} {minimum:g}"
    ok = is_number(raw)
    if ok and minimum is not None:
        ok = raw > minimum if strict else raw >= minimum
    if not ok:
        raise Invalid(where, f"expected {desc}, found {show(raw)}{float_hint(raw)}")
    return float(raw)


def as_bool(raw: Any, where: str) -> bool:
    """Exactly true or false (not 0/1, not a string)."""
    if not isinstance(raw, bool):
        raise Invalid(where, f"expected true or false, found {show(raw)}")
    return raw


def as_str(raw: Any, where: str) -> str:
    """A non-empty string."""
    if not isinstance(raw, str) or not raw.strip():
        raise Invalid(where, f"expected a non-empty string, found {show(raw)}")
    return raw


def choice(choices: Sequence[str], what: str) -> Check:
    """A check accepting exactly one of `choices` (strings), with a did-you-mean on typos."""

    def check(raw: Any, where: str) -> str:
        if isinstance(raw, str) and raw in choices:
            return raw
        found = f"unknown {what} {raw!r}{suggest(raw, list(choices))}" if isinstance(raw, str) else ""
        if found:
            raise Invalid(where, f"{found}; expected one of {', '.join(choices)}")
        raise Invalid(where, f"expected one of {', '.join(choices)}, found {show(raw)}")

    return check


def optional(check: Check) -> Check:
    """`check`, or None for an explicit `null`."""
    return lambda raw, where: None if raw is None else check(raw, where)


positive_int: Check = partial(as_int, minimum=1)
"""An int >= 1."""
non_negative_int: Check = partial(as_int, minimum=0)
"""An int >= 0."""
non_negative: Check = partial(as_float, minimum=0.0)
"""A finite number >= 0, as float."""
positive: Check = partial(as_float, minimum=0.0, strict=True)
"""A finite number > 0, as float."""
