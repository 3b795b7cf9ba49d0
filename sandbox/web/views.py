"""What the root side shows of envs and images: the very view functions the CLI's `--json` prints
(`Envs.ls`/`Envs.view` -> EnvView.to_dict, `ImageStore.summaries`), behind a small protocol so that
the RPC tests can run without a backend."""

from __future__ import annotations

import subprocess
from typing import Any, Protocol

from sandbox.errors import SandboxError
from sandbox.workspace import Workspace

MAX_LOG_BYTES = 1024 * 1024
LOG_TIMEOUT = 15.0


class Views(Protocol):
    def envs(self) -> list[dict[str, Any]]:
        """`sandbox ls --json`."""
        ...

    def env(self, name: str) -> dict[str, Any]:
        """`sandbox status NAME --json` without the live probe; NotFound for an unknown env."""
        ...

    def images(self) -> list[dict[str, Any]]:
        """`sandbox images --json`."""
        ...

    def logs(self, name: str, index: int, lines: int) -> list[str]:
        """The last `lines` lines of the app's log in instance `index` of env `name` (`sandbox logs`)."""
        ...


class WorkspaceViews:
    """The real views of workspace `ws` (an Envs per call: settings changes are seen at once)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def envs(self) -> list[dict[str, Any]]:
        from sandbox.envs import Envs

        return [v.to_dict() for v in Envs(self.ws).ls()]

    def env(self, name: str) -> dict[str, Any]:
        from sandbox.envs import Envs

        envs = Envs(self.ws)
        return {**envs.view(name).to_dict(), "events": envs.events(name, limit=10)}

    def images(self) -> list[dict[str, Any]]:
        from sandbox.store import ImageStore

        return [dict(s.__dict__) for s in ImageStore(self.ws.images).summaries()]

    def logs(self, name: str, index: int, lines: int) -> list[str]:
        from sandbox.envs import Envs

        return read_lines(Envs(self.ws).logs_argv(name, index, False, lines), lines)


def read_lines(argv: list[str], lines: int) -> list[str]:
    """The last `lines` lines argv prints (of at most 8 MiB of output, the last MiB of it kept),
    undecodable bytes replaced. SandboxError when it cannot run, fails, or takes over LOG_TIMEOUT
    seconds (it is killed then)."""
    import threading

    try:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise SandboxError(f"cannot read the logs: {e.strerror}") from e
    late = threading.Event()

    def too_late() -> None:
        late.set()
        p.kill()

    timer = threading.Timer(LOG_TIMEOUT, too_late)
    timer.start()
    try:
        out, err = p.stdout.read(8 * MAX_LOG_BYTES), p.stderr.read(4096)  # type: ignore[union-attr]
    finally:
        timer.cancel()
        if p.poll() is None:
            p.kill()  # more than 8 MiB: the rest is not read
        p.wait()
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
    if late.is_set():
        raise SandboxError(f"reading the logs took over {LOG_TIMEOUT:g} s", hint="try again")
    if p.returncode not in (0, -9) or (p.returncode and not out):
        raise SandboxError(f"reading the logs failed: {err.decode(errors='replace').strip()[-300:]}")
    return out[-MAX_LOG_BYTES:].decode(errors="replace").splitlines()[-lines:]
