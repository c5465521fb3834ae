"""One generic plugin registry, used for every kind of plugin (variants, input sources, metrics,
executors, benchmark kinds).

An entry is an object or a lazy ``"module:attr"`` string, so listing a registry imports no
optional dependency. Built-in entries are registered by importing a package named at
construction (``builtins``); third-party packages add entries through the entry-point group
named there (for example ``attnbench.variants``), without editing the harness. ``get`` imports
a lazy entry on first use and checks it against the registry's base class, so a plugin of the
wrong kind fails with a readable message instead of deep inside a run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from harness.common.errors import UserError
from harness.common.names import suggest

T = TypeVar("T")


class UnknownPluginError(UserError, KeyError):
    """A name not in a registry; the message names the kind, carries a did-you-mean and lists what exists."""

    def __str__(self) -> str:
        return str(self.args[0])


class PluginLoadError(UserError, ImportError):
    """A registered entry that cannot be imported, or is not of the registry's kind."""


def load_target(target: str) -> Any:
    """Import a ``"module:attr"`` string and return the attribute."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise PluginLoadError(f"plugin target {target!r} is not of the form 'module:attr'")
    return getattr(importlib.import_module(module_name), attr)


class Registry(Generic[T]):
    """Named plugins of one kind.

    kind: what the entries are, for messages ("variant", "input source", "metric").
    group: the entry-point group third-party packages register in (``attnbench.<kind>s``).
    builtins: a module whose import registers the built-in entries (imported on first lookup).
    check: validates a loaded entry (raises TypeError with a reason); by default an entry that
    is a class must subclass ``base`` and any other entry must be an instance of it.
    """

    def __init__(
        self,
        kind: str,
        group: str,
        builtins: str | None = None,
        base: type | None = None,
        check: Callable[[Any], None] | None = None,
    ) -> None:
        self.kind, self.group, self.builtins, self.base = kind, group, builtins, base
        self._check = check
        self._entries: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str, target: Any) -> None:
        """Register ``target`` (an object or a lazy "module:attr" string) under ``name``."""
        current = self._entries.get(name)
        if current is not None and current != target and not self._same_lazy(current, target):
            raise ValueError(f"{self.kind} {name!r} is already registered as {current!r}")
        self._entries[name] = target

    @staticmethod
    def _same_lazy(current: Any, target: Any) -> bool:
        """A loaded entry re-registered with the lazy string it came from is the same entry."""
        if not isinstance(target, str) or isinstance(current, str):
            return False
        try:
            return load_target(target) is current
        except (ImportError, AttributeError):
            return False

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that plant plugins use it)."""
        self._entries.pop(name, None)

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.builtins:
            importlib.import_module(self.builtins)
        for ep in entry_points(group=self.group):
            self._entries.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._ensure_loaded()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def unknown(self, name: str) -> UnknownPluginError:
        """The error for an unknown ``name``: kind, did-you-mean and the known names."""
        known = self.names()
        return UnknownPluginError(
            f"unknown {self.kind} {name!r}{suggest(str(name), known)}; known: {', '.join(known) or 'none'}"
        )

    def get(self, name: str) -> T:
        """The entry registered under ``name``, imported on first use and checked."""
        self._ensure_loaded()
        if name not in self._entries:
            raise self.unknown(name)
        target = self._entries[name]
        if isinstance(target, str):
            try:
                loaded = load_target(target)
            except Exception as err:  # noqa: BLE001 - a third-party module may fail to import any way
                raise PluginLoadError(
                    f"{self.kind} {name!r} ({target}) cannot be imported: {type(err).__name__}: {err}"
                ) from err
            self.validate(name, loaded)
            self._entries[name] = target = loaded
        return target

    def validate(self, name: str, obj: Any) -> None:
        """Raise PluginLoadError when ``obj`` is not a plugin of this registry's kind."""
        try:
            if self._check is not None:
                self._check(obj)
            elif self.base is not None:
                ok = issubclass(obj, self.base) if isinstance(obj, type) else isinstance(obj, self.base)
                if not ok:
                    raise TypeError(
                        f"expected a {self.base.__module__}.{self.base.__qualname__}, got {obj!r}"
                    )
        except TypeError as err:
            raise PluginLoadError(f"{self.kind} {name!r} is not a valid {self.kind}: {err}") from None

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) for every entry, importing each."""
        return [(name, self.get(name)) for name in self.names()]
