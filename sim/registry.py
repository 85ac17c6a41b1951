"""A name -> implementation registry for plug-ins (routers, solvers, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from sim.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Plug-ins register by name beside their implementation; unknown names list the valid ones.

    >>> ROUTERS = Registry("router")
    >>> @ROUTERS.register("switch")
    ... def switch(scores, ctx): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj
        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
