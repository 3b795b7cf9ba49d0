"""The host agent as the control side sees it: the bundle (sandbox's code as a zipapp, named by its
sha256) and the client that runs one agent op on a host and reads its JSON answer.

The bundle holds the package's modules but the CLI (and the web frontend): what runs on a host is the
same code that runs here (the safe unpack, saferoot, the lxc backend), so the guarantees are the same
and nothing is written twice. It needs only python3 (≥ 3.11) on the host, no pip package. It is copied
once per version: `AGENT_DIR/<sha>.pyz`; a host runs a command, never a daemon.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
import zipfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import IO, Any

from sandbox.hosts.agentcall import agent_call, answer_doc
from sandbox.hosts.session import SESSION_OPS, AgentSession, SessionLost
from sandbox.hosts.transport import HostError, Transport

HOST_ROOT = "/var/lib/sandbox-host"
AGENT_DIR = f"{HOST_ROOT}/agent"
MISSING = 97  # the launcher's exit when the bundle is not on the host yet
_SKIP = {"cli", "web", "__pycache__"}
_SKIP_TOP = {"templates"}  # sandbox/templates: `sandbox init`'s workspaces, for the CLI only
#: an interpreter path the host may name in its ping (it is run as the first word of a command)
_EXE = re.compile(r"/[A-Za-z0-9_.+/-]{1,200}")
_MAIN = b"import sys\nfrom sandbox.hostagent.main import main\nsys.exit(main())\n"


@cache
def bundle() -> tuple[str, bytes]:
    """(sha256 hex, zipapp bytes) of this sandbox's code; deterministic: same code, same digest."""
    pkg = Path(__file__).resolve().parent.parent
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("__main__.py", (1980, 1, 1, 0, 0, 0)), _MAIN)
        for path in sorted(pkg.rglob("*")):
            rel = path.relative_to(pkg)
            skip = _SKIP & set(rel.parts) or rel.parts[0] in _SKIP_TOP
            if not path.is_file() or skip or path.suffix in (".pyc", ".pyo"):
                continue
            info = zipfile.ZipInfo(f"sandbox/{rel.as_posix()}", (1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, path.read_bytes())
    data = buf.getvalue()
    return hashlib.sha256(data).hexdigest(), data


class HostAgent:
    """Runs agent ops on one host through its transport (installing the bundle on first use). Over a
    transport with sessions (ssh), the ops of one command share one agent session on the host
    (sandbox/hosts/session.py); an image stream, a terminal op, or a call made while another one is
    running there goes as its own command."""

    def __init__(self, transport: Transport, python: str | None = None) -> None:
        self.transport = transport
        #: the host's python; None: /usr/bin/python3 where the host has it (the distribution's, not
        #: a shim of the login user's), else `python3` on PATH
        self.python = python
        self._exe: str | None = None  # the interpreter the host ran the agent with (its ping)
        self._session: AgentSession | None = None
        self._ready = False

    @property
    def name(self) -> str:
        return self.transport.name

    @property
    def path(self) -> str:
        return f"{AGENT_DIR}/{bundle()[0][:24]}.pyz"

    def prefix(self) -> list[str]:
        """The command that runs the agent on the host, before the op and its arguments."""
        if not self._ready:
            self.ensure()
        return [self._exe or self.python or "python3", self.path]

    def argv(self, op: str, *args: str) -> list[str]:
        """The command that runs `op` on the host (for ops attached to a terminal: exec -i, logs -f)."""
        return [*self.prefix(), op, *args]

    def _launcher(self) -> list[str]:
        if self.python:
            run = f'exec {shlex.quote(self.python)} "$0" "$@"'
        else:
            run = (
                'if [ -x /usr/bin/python3 ]; then exec /usr/bin/python3 "$0" "$@"; fi; exec python3 "$0" "$@"'
            )
        return ["sh", "-c", f'test -f "$0" || exit {MISSING}; {run}', self.path]

    def _start(self) -> tuple[int, Any, bytes]:
        """(exit, answer document, stderr) of the agent's ping: a session's greeting, or a command."""
        if not self.transport.sessions:
            p = self.transport.run([*self._launcher(), "ping"], timeout=30)
            lines = p.stdout.decode(errors="replace").strip().splitlines()
            try:
                return p.returncode, json.loads(lines[-1]) if lines else None, p.stderr
            except ValueError:
                return p.returncode, None, p.stderr
        s = AgentSession(self.transport, [*self._launcher(), "session"])
        try:
            doc = s.greet(timeout=30)
        except SessionLost:
            return s.proc.returncode if s.proc.returncode is not None else 1, None, s.stderr
        self._session = s
        return int(doc.get("exit", 1)), doc, b""

    def ensure(self) -> dict[str, Any]:
        """Make sure the bundle is on the host (copied once per version); returns the host's ping."""
        code, doc, err = self._start()
        if code == MISSING:
            _, data = bundle()
            put = (
                'umask 022; mkdir -p "$(dirname "$0")" && cat > "$0.$$" && chmod 0644 "$0.$$" '
                '&& mv -f "$0.$$" "$0"'
            )
            up = self.transport.run(["sh", "-c", put, self.path], input=data, timeout=120)
            if up.returncode != 0:
                raise HostError(
                    f"host {self.name}: cannot install sandbox's host agent: {_tail(up.stderr)}",
                    hint=f"sandbox needs root (or sudo) on the host to write {AGENT_DIR}",
                )
            code, doc, err = self._start()
        if code == 127 or (code != 0 and b"python3" in err and b"not found" in err):
            raise HostError(
                f"host {self.name} has no python3",
                hint="`sandbox host prepare PROFILE` (apt-get install python3)",
            )
        ping = dict(answer_doc(self.name, "ping", code, doc, err))
        exe = ping.get("executable")
        self._exe = exe if isinstance(exe, str) and _EXE.fullmatch(exe) else None
        self._ready = True
        return ping

    def call(
        self,
        op: str,
        *args: str,
        request: Any = None,
        stdin: IO[bytes] | None = None,
        timeout: float | None = 120,
    ) -> Any:
        """Run `op` on the host and return its answer; AgentError with the host's message if it fails."""
        if not self._ready:
            self.ensure()
        s = self._session
        if stdin is None and op in SESSION_OPS and s is not None and not s.closed and s.lock.acquire(False):
            try:
                doc = s.call(op, args, request, timeout)
            finally:
                s.lock.release()
            if "crash" in doc:
                s.close()  # the agent exits after a crash; the next calls go as commands
            return answer_doc(self.name, op, int(doc.get("exit", 1)), doc)
        body = json.dumps(request).encode() if request is not None and stdin is None else None
        return agent_call(
            self.transport,
            self.prefix(),
            op,
            args,
            input=body if stdin is None else None,
            stdin=stdin,
            timeout=timeout,
        )

    def close(self) -> None:
        """End this command's session on the host (if one is open)."""
        if self._session is not None:
            self._session.close()
            self._session = None
        self._ready = False


def _tail(data: bytes, lines: int = 6) -> str:
    return "\n".join(data.decode(errors="replace").strip().splitlines()[-lines:])


def agents(transports: Sequence[Transport]) -> dict[str, HostAgent]:
    return {t.name: HostAgent(t) for t in transports}
