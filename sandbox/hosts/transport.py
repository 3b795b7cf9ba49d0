"""How sandbox runs a command on a host: the Transport protocol, and a local one for tests.

The SSH transport (sandbox/hosts/ssh.py) is the real one. Everything above talks to a host only
through `run` (a command, with bytes or a stream on stdin) and `argv` (the local command line that
runs a command there with the terminal attached: `exec -i`, `logs -f`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import IO, Protocol

from sandbox.errors import SandboxError


class HostError(SandboxError):
    """A host cannot be reached or refused what sandbox asked (the message names the host)."""

    def __init__(self, message: str, hint: str | None = None, host: str | None = None) -> None:
        super().__init__(message, hint)
        self.host = host


class HostUnreachable(HostError):
    """No connection to the host (down, network gone, sshd stopped, timeout)."""


class HostKeyUnknown(HostError):
    """The host's key is not in known_hosts (never accepted silently)."""


class HostKeyChanged(HostError):
    """The host's key differs from the one in known_hosts."""


class HostAuthRefused(HostError):
    """The host refused every key offered."""


class Transport(Protocol):
    name: str  # the host's name in the profile

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        stdin: IO[bytes] | None = None,
        timeout: float | None = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run argv on the host (no shell); stdout/stderr captured; a non-zero exit is returned, a
        failure to reach the host raises HostError."""
        ...

    def argv(self, argv: Sequence[str], tty: bool = False) -> list[str]:
        """The local command line that runs argv on the host (attached to this terminal)."""
        ...


class LocalTransport:
    """Runs the commands on this machine (unit tests; a host that is this machine)."""

    def __init__(self, name: str = "local") -> None:
        self.name = name

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        stdin: IO[bytes] | None = None,
        timeout: float | None = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        if input is not None:
            return subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout, check=False)
        return subprocess.run(list(argv), stdin=stdin, capture_output=True, timeout=timeout, check=False)

    def argv(self, argv: Sequence[str], tty: bool = False) -> list[str]:
        return list(argv)
