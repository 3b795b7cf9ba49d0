"""How sandbox runs a command on a host: the Transport protocol, and a local one for tests.

The SSH transport (sandbox/hosts/ssh.py) is the real one. Everything above talks to a host only
through `run` (a command, with bytes or a stream on stdin), `talk` (a command whose stdin is written
while what it answers on the way is read: one request for a question and what follows from its
answer) and `argv` (the local command line that runs a command there with the terminal attached:
`exec -i`, `logs -f`).
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Callable, Sequence
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
    #: agent calls may share one session per command (sandbox/hosts/session.py) through `spawn`
    sessions: bool

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

    def talk(self, argv: Sequence[str], talk: Talk, *, timeout: float | None = 60) -> Completed:
        """Run argv on the host while `talk(stdin, stdout)` (a thread) writes its stdin and reads
        from its stdout what it answers on the way; stdin is closed when `talk` returns, and what
        `talk` did not read of stdout and all stderr are captured. The result as `run` gives it:
        stdout in it is all the host wrote, what `talk` read included."""
        ...

    def argv(self, argv: Sequence[str], tty: bool = False) -> list[str]:
        """The local command line that runs argv on the host (attached to this terminal)."""
        ...

    def spawn(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start argv on the host with stdin, stdout and stderr as pipes, to talk to while it runs
        (an agent session); HostError if the host is known to be unreachable."""
        ...

    def failure(self, code: int, stderr: bytes) -> HostError | None:
        """What a command's exit and stderr mean when they are the transport's own failure (ssh: no
        connection, a host key, auth, sudo), else None."""
        ...

    def gone(self, what: str) -> HostUnreachable:
        """The host stopped answering (`what` follows its name); it stays so for this command."""
        ...


class Answers(Protocol):
    """A command's stdout as `talk` reads it."""

    def readline(self, limit: int = -1) -> bytes: ...

    def read(self, n: int = -1) -> bytes: ...


Completed = subprocess.CompletedProcess[bytes]
Talk = Callable[[IO[bytes], Answers], None]


class _Recording:
    """A process's stdout as `talk` reads it, keeping what was read (it belongs to the result)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.read_so_far = f, bytearray()

    def readline(self, limit: int = -1) -> bytes:
        line = self.f.readline(limit)
        self.read_so_far += line
        return line

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.read_so_far += data
        return data


def converse(cmd: list[str], talk: Talk, timeout: float | None) -> Completed:
    """`cmd` with `talk` writing its stdin and reading its stdout in a thread (Transport.talk);
    TimeoutExpired (the process killed) when the whole exchange takes longer than `timeout`. A
    `talk` that meets a closed pipe (the other end stopped) just ends: the exit and the answer say
    why; anything else it raises is raised here."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    sink, out, errs = proc.stdin, _Recording(proc.stdout), proc.stderr
    failed: list[BaseException] = []
    err: list[bytes] = []

    def talker() -> None:
        try:
            talk(sink, out)
        except OSError:
            pass
        except BaseException as e:
            failed.append(e)
        finally:
            with contextlib.suppress(OSError):
                sink.close()
        with contextlib.suppress(OSError):
            out.read()  # the rest, up to the end (its exit)

    threads = [threading.Thread(target=talker), threading.Thread(target=lambda: err.append(errs.read()))]
    for th in threads:
        th.daemon = True
        th.start()
    threads[0].join(timeout)
    late = threads[0].is_alive()
    if late:
        proc.kill()  # its pipes close: the threads end
    for th in threads:
        th.join()
    code = proc.wait()
    proc.stdout.close()
    errs.close()
    if late:
        raise subprocess.TimeoutExpired(cmd, timeout or 0)
    if failed:
        raise failed[0]
    return subprocess.CompletedProcess(cmd, code, bytes(out.read_so_far), err[0] if err else b"")


class LocalTransport:
    """Runs the commands on this machine (unit tests; a host that is this machine)."""

    def __init__(self, name: str = "local", sessions: bool = False) -> None:
        self.name = name
        self.sessions = sessions

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

    def talk(self, argv: Sequence[str], talk: Talk, *, timeout: float | None = 60) -> Completed:
        return converse(list(argv), talk, timeout)

    def argv(self, argv: Sequence[str], tty: bool = False) -> list[str]:
        return list(argv)

    def spawn(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def failure(self, code: int, stderr: bytes) -> HostError | None:
        return None

    def gone(self, what: str) -> HostUnreachable:
        return HostUnreachable(f"host {self.name}{what}", host=self.name)
