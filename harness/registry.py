"""Registry of attention variants: register by name, resolve lazily, suggest on typos.

Entries are either classes or lazy "module:Class" strings, so listing the registry does not
import optional dependencies. Built-in variants register themselves in `attentions/__init__.py`;
third-party packages can add an entry point in the group ``attnbench.variants``.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points

from harness.api import AttentionVariant

BUILTIN_PACKAGE = "attentions"
ENTRY_POINT_GROUP = "attnbench.variants"

_entries: dict[str, type[AttentionVariant] | str] = {}
_loaded_builtins = False


class UnknownVariantError(KeyError):
    """Raised for a name not in the registry; the message carries a did-you-mean."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(name: str, target: type[AttentionVariant] | str) -> None:
    """Register `target` (a class or a lazy "module:Class" string) under `name`."""
    if name in _entries and _entries[name] != target:
        raise ValueError(f"variant {name!r} is already registered as {_entries[name]!r}")
    _entries[name] = target


def unregister(name: str) -> None:
    """Remove `name` (used by tests that plant variants)."""
    _entries.pop(name, None)


def _ensure_loaded() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    importlib.import_module(BUILTIN_PACKAGE)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _entries:
            register(ep.name, ep.value)


def names() -> list[str]:
    """All registered variant names, sorted."""
    _ensure_loaded()
    return sorted(_entries)


def suggest(name: str, choices: list[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get(name: str) -> type[AttentionVariant]:
    """The variant class registered under `name`, importing it on first use."""
    _ensure_loaded()
    if name not in _entries:
        raise UnknownVariantError(
            f"unknown variant {name!r}{suggest(name, sorted(_entries))}; known: {', '.join(sorted(_entries))}"
        )
    target = _entries[name]
    if isinstance(target, str):
        module_name, _, class_name = target.partition(":")
        target = getattr(importlib.import_module(module_name), class_name)
        _entries[name] = target
    return target
