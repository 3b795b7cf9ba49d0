"""The ops of the host agent (each registered with @op): ping, the image store, the lxc backend."""

from __future__ import annotations

import os
import platform
from typing import Any

from sandbox.hostagent.main import op


@op("ping")
def ping(args: list[str]) -> dict[str, Any]:
    return {"euid": os.geteuid(), "python": platform.python_version(), "kernel": platform.release()}


def _register() -> None:
    """The other ops live in their own modules; importing them registers them."""
    from sandbox.hostagent import hostcheck, lxcops, routerops  # noqa: F401


_register()
