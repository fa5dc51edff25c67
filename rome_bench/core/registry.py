"""One generic registry for methods, attacks, datasets and architectures.

Every pluggable thing in rome-bench lives in a :class:`Registry`. Lookups are strict: an
unknown name raises :class:`UnknownNameError` listing the known names and the closest match,
so a typo can never fall through to a silently different behaviour (a classic failure of the
field's research harnesses, where an unknown attack name measured clean accuracy).

>>> colors = Registry("color")
>>> @colors.register("red", "rouge", description="the first colour")
... def red():
...     return "#f00"
>>> colors.get("ROUGE")()
'#f00'
>>> colors.list()
['red']
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RomeBenchError(Exception):
    """Base class of every error rome-bench reports to users as a one-line message."""


class UnknownNameError(RomeBenchError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class DuplicateNameError(RomeBenchError):
    """Two different objects were registered under one name."""


@dataclass
class Entry(Generic[T]):
    """A registered object with its canonical name, aliases and free-form metadata."""

    name: str
    obj: T
    aliases: tuple[str, ...] = ()
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """Where the object was defined, for error messages about duplicates."""
        target = self.obj
        module = getattr(target, "__module__", None) or type(target).__module__
        qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
        try:
            path = inspect.getsourcefile(target)  # type: ignore[arg-type]
        except TypeError:
            path = None
        return f"{module}.{qualname}" + (f" ({path})" if path else "")


def normalize_name(name: str) -> str:
    """Names are case-insensitive and ignore surrounding spaces; '_' and '-' are equivalent."""
    return name.strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """A name -> object table with aliases, strict lookup and entry-point discovery.

    Args:
        kind: what the registry holds, used in messages ("method", "attack", ...).
        entry_point_group: optional ``importlib.metadata`` entry-point group whose entries are
            imported (once, lazily) so third-party packages can register objects.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        self._loaders: list[Callable[[], None]] = []
        self._loaded = False

    # -- registration -------------------------------------------------------------------
    def register(
        self, name: str, *aliases: str, description: str = "", **meta: Any
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (and ``aliases``); returns ``obj``."""

        def decorator(obj: T) -> T:
            self.add(name, obj, *aliases, description=description, **meta)
            return obj

        return decorator

    def add(self, name: str, obj: T, *aliases: str, description: str = "", **meta: Any) -> Entry[T]:
        """Register ``obj`` directly (the non-decorator form of :meth:`register`)."""
        entry = Entry(normalize_name(name), obj, tuple(normalize_name(a) for a in aliases),
                      description, dict(meta))
        for key in (entry.name, *entry.aliases):
            existing = self.find(key)
            if existing is not None:
                if existing.obj is obj or existing.origin == entry.origin:
                    # Re-importing the same module (e.g. reloading a plugin) is harmless.
                    self.remove(existing)
                    continue
                raise DuplicateNameError(
                    f"{self.kind} '{key}' is registered twice: by {existing.origin} "
                    f"and by {entry.origin}"
                )
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name
        return entry

    def remove(self, entry: Entry[T]) -> None:
        """Unregister ``entry`` and its aliases (a real implementation replacing a placeholder)."""
        self._entries.pop(entry.name, None)
        for alias in entry.aliases:
            self._aliases.pop(alias, None)

    def add_loader(self, loader: Callable[[], None] | str) -> None:
        """Run ``loader`` once before the first lookup (used to import built-in plugin folders).

        A string names a module (``"pkg.mod"``, imported for its registrations) or a function
        (``"pkg.mod:func"``, imported and called). Strings let a registry that lives in
        ``rome_bench.core`` fill itself from a higher layer without ``core`` importing it.
        """
        self._loaders.append(loader)
        self._loaded = False

    # -- lookup -------------------------------------------------------------------------
    def find(self, name: str) -> Entry[T] | None:
        """The entry for ``name`` or an alias, or None; never runs the loaders (safe while they
        run, e.g. to check for a placeholder before registering its real implementation)."""
        key = normalize_name(name)
        key = self._aliases.get(key, key)
        return self._entries.get(key)

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for loader in self._loaders:
            if isinstance(loader, str):
                module, _, func = loader.partition(":")
                imported = importlib.import_module(module)
                if func:
                    getattr(imported, func)()
            else:
                loader()
        if self.entry_point_group:
            for ep in metadata.entry_points(group=self.entry_point_group):
                try:
                    ep.load()
                except Exception as exc:  # a broken plugin must not break the whole tool
                    raise RomeBenchError(
                        f"could not load {self.kind} plugin '{ep.name}' ({ep.value}): {exc}"
                    ) from exc

    def entry(self, name: str) -> Entry[T]:
        """The :class:`Entry` for ``name``; raises :class:`UnknownNameError` with suggestions."""
        self._ensure_loaded()
        found = self.find(name)
        if found is None:
            raise UnknownNameError(self._unknown_message(name))
        return found

    def get(self, name: str) -> T:
        """The object registered under ``name`` or one of its aliases (case-insensitive)."""
        return self.entry(name).obj

    def _unknown_message(self, name: str) -> str:
        known = sorted(set(self._entries) | set(self._aliases))
        close = difflib.get_close_matches(normalize_name(name), known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return f"Unknown {self.kind} '{name}'.{hint} Available: {', '.join(sorted(self._entries))}"

    def list(self, pattern: str | None = None) -> list[str]:
        """Sorted canonical names, optionally filtered by a shell-style ``pattern``."""
        self._ensure_loaded()
        names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatch(n, normalize_name(pattern))]
        return names

    def entries(self) -> Iterator[Entry[T]]:
        """Entries in name order."""
        for name in self.list():
            yield self._entries[name]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._ensure_loaded()
        return self.find(name) is not None

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"
