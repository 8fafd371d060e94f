"""One small registry type, used for every plug-in point (converters, ...)."""
from __future__ import annotations

from typing import Callable, Generic, Hashable, Iterable, TypeVar

from .errors import EdgeOpsError, UnsupportedModelError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a key to a plug-in. Refuses silent overwrite; a failed lookup lists what exists.

    ``entry_point_group`` names a Python entry-point group whose entries are loaded
    (once, lazily) before the first lookup, so third-party packages can plug in.
    Each entry point must name a callable that takes the registry and registers into it.
    """

    def __init__(self, what: str, entry_point_group: str | None = None):
        self.what = what
        self.entry_point_group = entry_point_group
        self._items: dict[Hashable, T] = {}
        self._loaders: list[Callable[[], None]] = []
        self._loaded = False

    def register(self, key: Hashable, value: T, *, replace: bool = False) -> T:
        if key in self._items and not replace:
            raise EdgeOpsError(
                f"a {self.what} is already registered for {key!r}",
                "pass replace=True to override it on purpose",
            )
        self._items[key] = value
        return value

    def add_loader(self, loader: Callable[[], None]) -> None:
        """Run ``loader`` before the first lookup (used to import built-in plug-ins lazily)."""
        self._loaders.append(loader)

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for loader in self._loaders:
            loader()
        if self.entry_point_group:
            from importlib.metadata import entry_points

            for ep in entry_points(group=self.entry_point_group):
                try:
                    ep.load()(self)
                except Exception as exc:  # a broken plug-in must not break the tool
                    import warnings

                    warnings.warn(f"could not load {self.what} plug-in {ep.name!r}: {exc}")

    def get(self, key: Hashable) -> T:
        self._ensure_loaded()
        try:
            return self._items[key]
        except KeyError:
            known = ", ".join(sorted(map(_fmt, self._items))) or "none"
            raise UnsupportedModelError(
                f"no {self.what} for {_fmt(key)}", f"registered: {known}"
            ) from None

    def __contains__(self, key: Hashable) -> bool:
        self._ensure_loaded()
        return key in self._items

    def keys(self) -> Iterable[Hashable]:
        self._ensure_loaded()
        return list(self._items)


def _fmt(key: Hashable) -> str:
    if isinstance(key, tuple):
        return " -> ".join(map(str, key))
    return str(key)
