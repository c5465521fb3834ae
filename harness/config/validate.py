"""Validation machinery for scenario YAML: safe reading, key paths and typed value checks.

Every check raises `Invalid(where, message)`, where `where` is a key path such as
`variants[2].params.m`; `harness.config.scenario.load_scenario` prefixes the file name and turns it
into a one-line `ScenarioError`. Nothing here knows the scenario schema except the variant
`Params` type rules (`param_check`), which only read dataclass fields. The scalar checks
(`as_int`, `as_float`, ..., and `Invalid`) live in `harness.common.checks`, below every stage
that validates input (input sources check their own knobs), and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Sequence
from typing import Any

import yaml

from harness.common.checks import (  # re-exported: the scalar checks live below the config stage
    Check,
    Invalid,
    as_bool,
    as_float,
    as_int,
    as_str,
    choice,
    float_hint,
    is_int,
    is_number,
    optional,
    show,
)
from harness.common.names import suggest

__all__ = [
    "TOP",
    "Check",
    "Invalid",
    "as_bool",
    "as_float",
    "as_int",
    "as_str",
    "axis",
    "block",
    "choice",
    "key",
    "mapping",
    "one_line",
    "optional",
    "param_check",
    "read_yaml",
    "show",
]

TOP = "(top level)"
# libyaml's safe loader when PyYAML has it (the same YAML and tags as SafeLoader, ~6x faster on
# a long list); the constructor is SafeConstructor either way, so no tag can run code
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_BYTES = 1 << 20  # a scenario file larger than this is refused
MAX_DEPTH = 32  # mappings and lists nested deeper than this are refused
MAX_NODES = 20_000  # values after expanding YAML aliases: more is refused (a 10,000-case sweep
# needs a few hundred; each value costs PyYAML's resolver ~20 us, so this bounds reading to ~0.5 s)


# ----- rendering ----------------------------------------------------------------------------
def key(where: str, name: Any) -> str:
    """Key path of `name` inside `where` (TOP or '' means the document root)."""
    name = name if isinstance(name, str) and re.fullmatch(r"[\w\-]+", name) else repr(name)
    return name if where in ("", TOP) else f"{where}.{name}"


def one_line(text: str) -> str:
    """Join any line breaks with spaces so an error message stays on one line."""
    return " ".join(part.strip() for part in text.splitlines())


# ----- reading ------------------------------------------------------------------------------
def _check_duplicate_keys(node: yaml.Node | None, where: str, seen: set[int]) -> None:
    """Reject a mapping that repeats a key (plain `safe_load` silently keeps the last one)."""
    if node is None or id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else None
            if name is not None and name != "<<":
                if name in lines:
                    line = k.start_mark.line + 1
                    raise Invalid(key(where, name), f"duplicate key (lines {lines[name]} and {line})")
                lines[name] = k.start_mark.line + 1
            _check_duplicate_keys(v, key(where, name) if name is not None else where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, f"{where}[{i}]", seen)


def _yaml_invalid(err: yaml.YAMLError) -> Invalid:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(yaml)"
    problem = str(getattr(err, "problem", None) or err)
    tag = re.search(r"constructor for the tag '([^']*)'", problem)
    if isinstance(err, yaml.constructor.ConstructorError) and tag:
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return Invalid(where, f"YAML tag {shown!r} is not allowed; scenarios are plain YAML (safe_load)")
    context = getattr(err, "context", None)
    return Invalid(
        where, f"invalid YAML: {one_line(problem)}" + (f" ({one_line(context)})" if context else "")
    )


def _read_text(path: str) -> str:
    """The file's text: a regular file (not a FIFO, device or folder) of at most MAX_BYTES.
    Opened non-blocking, so a FIFO never hangs the open; checked with fstat on that descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise Invalid("(file)", "file not found") from None
    except OSError as err:
        raise Invalid("(file)", f"cannot read: {err.strerror or one_line(str(err))}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = (
                "a directory"
                if stat.S_ISDIR(mode)
                else "a FIFO"
                if stat.S_ISFIFO(mode)
                else "not a regular file"
            )
            raise Invalid("(file)", f"{kind}; expected a scenario YAML file")
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise Invalid("(file)", f"larger than {MAX_BYTES // 1024} KiB; a scenario is a short YAML file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Invalid("(file)", f"cannot read: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _check_size(text: str) -> None:
    """Refuse, before anything is built, YAML nested deeper than MAX_DEPTH or that would expand
    (aliases counted at their full size) to more than MAX_NODES nodes: an alias bomb of a few
    hundred bytes otherwise takes minutes and gigabytes, and deep nesting overflows the stack of
    PyYAML's recursive composer. The event parser keeps its own stack, so this scan is safe."""
    sizes: dict[str, int] = {}  # anchor -> expanded node count of what it names
    stack: list[list[Any]] = []  # open collections: [anchor, expanded nodes so far]
    total = 0
    for event in yaml.parse(text, Loader=LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) > MAX_DEPTH:
                line = event.start_mark.line + 1
                raise Invalid(f"line {line}", f"nested more than {MAX_DEPTH} levels deep")
            total += 1
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, n = stack.pop()
            if anchor:
                sizes[anchor] = n
        elif isinstance(event, yaml.AliasEvent):
            n = sizes.get(event.anchor, 1)
            total += n
        elif isinstance(event, yaml.ScalarEvent):
            n = 1
            total += 1
            if event.anchor:
                sizes[event.anchor] = 1
        else:
            continue
        if stack:
            stack[-1][1] += n  # the enclosing collection's expanded size
        if total > MAX_NODES:
            line = event.start_mark.line + 1
            raise Invalid(
                f"line {line}",
                f"more than {MAX_NODES} values (aliases counted in full); a scenario needs far fewer",
            )


def read_yaml(path: str) -> dict[str, Any]:
    """Parse `path` with `yaml.safe_load` (no tag can run code) into the top-level mapping, within
    the bounds above (regular file, MAX_BYTES, MAX_DEPTH, MAX_NODES)."""
    text = _read_text(path)
    try:
        _check_size(text)
        loader = LOADER(text)
        try:
            node = loader.get_single_node()
            _check_duplicate_keys(node, TOP, set())
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise _yaml_invalid(err) from None
    if data is None:
        raise Invalid(TOP, "empty file; expected a mapping with name, problem and variants")
    if not isinstance(data, dict):
        raise Invalid(TOP, f"expected a mapping with name, problem and variants, found {show(data)}")
    return data


# ----- structure ----------------------------------------------------------------------------
def mapping(raw: Any, where: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any]:
    """`raw` as a dict whose keys are all in `allowed` and include every `required` key."""
    if not isinstance(raw, dict):
        raise Invalid(where, f"expected a mapping with keys {', '.join(allowed)}, found {show(raw)}")
    for name in raw:
        if not isinstance(name, str):
            raise Invalid(where, f"keys must be strings, found key {show(name)}")
        if name not in allowed:
            expected = f"expected one of {', '.join(allowed)}" if allowed else "no keys are allowed here"
            raise Invalid(key(where, name), f"unknown key{suggest(name, list(allowed))}; {expected}")
    for name in required:
        if name not in raw:
            raise Invalid(key(where, name), "required key is missing")
    return raw


def axis(raw: Any, where: str, check: Check, desc: str) -> tuple[Any, ...]:
    """A sweep axis: a scalar (one value) or a non-empty list of distinct values, each `check`ed."""
    if isinstance(raw, dict):
        raise Invalid(where, f"expected {desc} or a non-empty list of them, found {show(raw)}")
    if not isinstance(raw, list):
        return (check(raw, where),)
    if not raw:
        raise Invalid(where, f"expected {desc} or a non-empty list of them, found an empty list")
    values = [check(v, f"{where}[{i}]") for i, v in enumerate(raw)]
    first: dict[Any, int] = {}  # value -> its first index: one pass (values are scalars, hashable)
    for j, v in enumerate(values):
        i = first.setdefault(v, j)
        if i != j:
            raise Invalid(f"{where}[{j}]", f"duplicate value {show(raw[j])} (same as {where}[{i}])")
    return tuple(values)


def block(raw: Any, where: str, cls: type, checks: dict[str, Check]) -> Any:
    """A flat settings mapping -> `cls(**values)`; absent keys keep the dataclass defaults."""
    values = mapping(raw, where, list(checks))
    return cls(**{name: checks[name](v, key(where, name)) for name, v in values.items()})


# ----- variant params -----------------------------------------------------------------------
_KINDS = {"int": "an int", "float": "a number", "bool": "true or false", "str": "a string"}


def _field_kind(f: dataclasses.Field) -> str | None:
    """int | float | bool | str | optional (default None), from the default, else the annotation."""
    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if default is None:
            return "optional"
        return type(default).__name__ if type(default) in (int, float, bool, str) else None
    names = {t.strip() for t in str(getattr(f.type, "__name__", f.type)).split("|")}
    if "None" in names:
        return "optional"
    return names.pop() if len(names) == 1 and names <= set(_KINDS) else None


def param_check(f: dataclasses.Field) -> tuple[Check, str]:
    """The value check for one `Params` field and a description of what it accepts."""
    kind = _field_kind(f)
    desc = _KINDS.get(kind or "", "null, a number or a string" if kind == "optional" else "a scalar")

    def check(raw: Any, where: str) -> Any:
        ok = {
            "int": is_int(raw),
            "float": is_number(raw),
            "bool": isinstance(raw, bool),
            "str": isinstance(raw, str),
            "optional": raw is None or is_number(raw) or isinstance(raw, str),
        }.get(kind or "", raw is None or isinstance(raw, bool | int | float | str))
        if not ok:
            hint = float_hint(raw) if kind == "float" else ""
            raise Invalid(where, f"expected {desc}, found {show(raw)}{hint}")
        return float(raw) if kind == "float" else raw

    return check, desc
