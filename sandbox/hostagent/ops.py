"""The ops of the host agent (each registered with @op): ping, the image store, the lxc backend."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from sandbox.hostagent.main import op


@op("ping")
def ping(args: list[str]) -> dict[str, Any]:
    return {
        "euid": os.geteuid(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "executable": sys.executable,
        "pid": os.getpid(),
    }
