"""Running the host tools the image formats need (mkfs.ext4, qemu-img, cp), and their error."""

from __future__ import annotations

import subprocess

from sandbox.errors import SandboxError, ToolMissing


class ImageFormatError(SandboxError):
    """An image could not be written in a format (a host tool failed, or the image lacks a part)."""


def run(
    argv: list[str], timeout: float | None = 60, check_tool: str | None = None
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with text output that turns a missing tool into a clear error."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        tool = check_tool or argv[0]
        raise ToolMissing(f"{tool} is not installed", hint=f"apt-get install {tool}") from e
