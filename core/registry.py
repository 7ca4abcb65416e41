"""Named kinds of one sort, each registered by a decorator in its own module: a new engine,
prompt family or experiment kind is one new file, found by name from a config or the CLI.

The way inspect_ai registers tasks and scorers, with one difference: the modules of a kind's
package are imported on the first lookup, so nothing has to import a new file by hand. The
modules themselves stay cheap to import (heavy libraries load inside their functions), so
listing the kinds costs milliseconds.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from germline.core.errors import InputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Kinds of `what` (say "engine"), registered in the modules of `package` whose names end
    with `suffix` (every module when empty; subpackages count as modules). An unknown name is
    an `error` (an InputError, or the floor's own subclass of it)."""

    def __init__(
        self, what: str, package: str, suffix: str = "", error: type[InputError] = InputError
    ) -> None:
        self.what = what
        self.package = package
        self.suffix = suffix
        self.error = error
        self._kinds: dict[str, T] = {}
        self._found = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@ENGINES.register("vllm")` above a class (or any object to register)."""

        def add(kind: T) -> T:
            if name in self._kinds and self._kinds[name] is not kind:
                raise ValueError(f"two {self.what}s are registered as {name!r}")
            self._kinds[name] = kind
            return kind

        return add

    def _discover(self) -> None:
        if self._found:
            return
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if info.name.startswith("_") or not info.name.endswith(self.suffix):
                continue
            importlib.import_module(f"{self.package}.{info.name}")
        self._found = True

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._kinds)

    def get(self, name: str) -> T:
        """The kind registered as `name`; InputError naming the known ones otherwise."""
        self._discover()
        try:
            return self._kinds[name]
        except KeyError:
            known = ", ".join(self.names())
            raise self.error(f"unknown {self.what} {name!r}: known are {known}") from None

    def check(self, name: str) -> str:
        """`name`, if it is registered (for config validators)."""
        self.get(name)
        return name
