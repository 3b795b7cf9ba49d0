"""Names of the core imported on first use, so that `sandbox --help` and shell completion (which
load every command module) do not pay for the builder's, the envs' or pydantic's imports.

    if TYPE_CHECKING:
        from sandbox.envs import Envs
    else:
        Envs = lazy("sandbox.envs", "Envs")

`Envs(...)` and `Envs.attr` then import sandbox.envs the first time they run; mypy sees the real
names. tests/test_cli_fast.py checks that `sandbox --help` imports none of the heavy modules.
"""

from __future__ import annotations

import importlib
from typing import Any


class _Lazy:
    __slots__ = ("_module", "_name", "_target")

    def __init__(self, module: str, name: str) -> None:
        self._module = module
        self._name = name
        self._target: Any = None

    def _get(self) -> Any:
        if self._target is None:
            self._target = getattr(importlib.import_module(self._module), self._name)
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._get()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._get(), attr)

    def __repr__(self) -> str:
        return f"<lazy {self._module}.{self._name}>"


def lazy(module: str, *names: str) -> Any:
    """One stand-in per name (a tuple of them for several names)."""
    proxies = tuple(_Lazy(module, n) for n in names)
    return proxies[0] if len(proxies) == 1 else proxies
