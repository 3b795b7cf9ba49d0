"""One agent session on a host (sandbox/hostagent/session.py): one ssh channel and one Python process
on the host for a whole command, one JSON line per request and per answer.

A promotion asks each host dozens of things; as separate commands each pays for an ssh session, a
login shell and a Python start there (0.1-0.5 s, several times more on a loaded host). Here each pays
a line there and back. The session ends with the command: `close()`, or the pipe closed by the
kernel when this process ends, and the agent on the host exits at end-of-file.

An answer line is bounded (MAX_ANSWER): a host cannot make this process hold an unbounded answer. A
host that stops answering is noticed as ssh notices it (ServerAlive*: the channel closes, the session
reads end-of-file) or at the call's timeout, and the session is then closed for good.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
from collections.abc import Sequence
from typing import IO, Any

from sandbox.hosts.transport import HostError, HostUnreachable, Transport

#: the ops a session runs (the rest stream bytes, recv-image, or take the terminal, lxc-tty/-logs)
SESSION_OPS = frozenset(
    {
        "ping",
        "caps",
        "have",
        "lxc",
        "docker-ping",
        "docker-load",
        "lxd-trust",
        "lxd-import",
        "lxd-init",
        "lxd-publish",
        "libvirt",
        "host-check",
        "router",
        "lock",
    }
)
#: the longest answer line a host may send (an exec's output, a host check)
MAX_ANSWER = 64 << 20
_EOF = b""


class SessionLost(HostUnreachable):
    """The session's process ended or stopped answering."""


class AgentSession:
    """A live session on host `t`, started as `argv` (the agent's prefix and `session`)."""

    def __init__(self, t: Transport, argv: Sequence[str], timeout: float = 60) -> None:
        self.t = t
        self.proc = t.spawn(list(argv))
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self._in: IO[bytes] = self.proc.stdin
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._err = bytearray()
        self.lock = threading.Lock()  # one request at a time (a second caller uses a one-shot call)
        self.closed = False
        for target, stream in ((_read_lines, self.proc.stdout), (_read_tail, self.proc.stderr)):
            sink: Any = self._lines if target is _read_lines else self._err
            threading.Thread(
                target=target, args=(stream, sink), daemon=True, name=f"session-{t.name}"
            ).start()

    @property
    def stderr(self) -> bytes:
        return bytes(self._err)

    def greet(self, timeout: float = 60) -> dict[str, Any]:
        """The agent's first line: its ping. When it could not start, the error (and `proc` has
        the launcher's exit)."""
        return self._next("session", timeout)

    def call(self, op: str, args: Sequence[str], request: Any, timeout: float | None) -> dict[str, Any]:
        """The answer document to one request (`exit` in it); SessionLost if the session ended."""
        if self.closed:
            raise SessionLost(f"host {self.t.name}: the agent session is closed", host=self.t.name)
        line = json.dumps({"op": op, "args": list(args), "request": request}).encode() + b"\n"
        try:
            self._in.write(line)
            self._in.flush()
        except OSError:
            pass  # it ended: its exit and stderr say why (read below)
        return self._next(op, timeout)

    def _next(self, op: str, timeout: float | None) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.close(kill=True)
            raise self.t.gone(f": agent {op} got no answer in {timeout or 0:.0f}s") from None
        if line is _EOF or not line.endswith(b"\n"):
            too_long = len(line) > MAX_ANSWER
            self.close(kill=too_long)  # (an agent still writing its answer would not read the end)
            raise self._ended(op, too_long)
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            self.close(kill=True)
            raise SessionLost(f"host {self.t.name}: agent {op}: a malformed answer", host=self.t.name)
        return doc

    def _ended(self, op: str, too_long: bool) -> HostError:
        if too_long:
            return HostError(
                f"host {self.t.name}: agent {op} answered more than {MAX_ANSWER >> 20} MiB", host=self.t.name
            )
        code = self.proc.wait()
        failure = self.t.failure(code, bytes(self._err))
        if failure is not None:
            return failure
        tail = bytes(self._err).decode(errors="replace").strip().splitlines()[-5:]
        return SessionLost(
            f"host {self.t.name}: the agent session ended (exit {code}) during {op}: "
            f"{' / '.join(tail)[:2000] or 'no output'}",
            hint="is the host up? `sandbox host check PROFILE`",
            host=self.t.name,
        )

    def close(self, kill: bool = False) -> None:
        """End the session: end-of-file to the agent (it exits), or kill the local ssh."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self._in.close()
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _read_lines(stream: IO[bytes], lines: queue.Queue[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        while True:
            line = stream.readline(MAX_ANSWER + 1)
            if not line:
                break
            lines.put(line)
            if not line.endswith(b"\n"):  # over the bound: nothing after it is read
                return
    lines.put(_EOF)


def _read_tail(stream: IO[bytes], tail: bytearray) -> None:
    with contextlib.suppress(OSError, ValueError):
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]
            tail += chunk
            del tail[: max(0, len(tail) - 65536)]
