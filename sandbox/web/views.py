"""What the root side shows of envs and images: the very view functions the CLI's `--json` prints
(`Envs.ls`/`Envs.view` -> EnvView.to_dict, `ImageStore.summaries`, `image_diff_view`), behind a small
protocol so that the RPC tests can run without a backend."""

from __future__ import annotations

import subprocess
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sandbox.errors import SandboxError
from sandbox.workspace import Workspace

if TYPE_CHECKING:
    from sandbox.store.store import ImageSummary

MAX_LOG_BYTES = 1024 * 1024
LOG_TIMEOUT = 15.0
DIFF_LIMIT = 2000  # entries listed per kind of change (`sandbox image diff --limit 2000 --json`)
DIFF_CACHE = 16  # diffs kept: images are content-addressed, so a cached diff never goes stale


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

    def image_diff(self, a: str, b: str) -> dict[str, Any]:
        """`sandbox image diff A B --limit 2000 --json` of two full digests; NotFound for a missing one."""
        ...


class ImageViews:
    """`images` and `image_diff` of the store at `root`, with the last DIFF_CACHE diffs and every
    image's summary row kept (a digest fixes all of it but the refs, which are read each time)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._diffs: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._rows: dict[str, ImageSummary] = {}  # digest -> ImageSummary: only its refs can change
        self._lock = threading.Lock()

    def images(self) -> list[dict[str, Any]]:
        from sandbox.store import ImageStore

        with self._lock:
            rows = ImageStore(self.root).summaries(self._rows)
        return [dict(s.__dict__) for s in rows]

    def image_diff(self, a: str, b: str) -> dict[str, Any]:
        from sandbox.errors import NotFound
        from sandbox.promote.diffview import image_diff_view
        from sandbox.store import ImageStore

        store = ImageStore(self.root)
        for d in (a, b):  # a removed image is gone from the view, cached or not
            if not store.manifest_path(d).is_file():
                raise NotFound(f"image {d} not found", hint="list images with `sandbox images`")
        with self._lock:
            if (hit := self._diffs.get((a, b))) is not None:
                self._diffs.move_to_end((a, b))
                return hit
        view = image_diff_view(store, a, b, limit=DIFF_LIMIT)
        with self._lock:
            self._diffs[(a, b)] = view
            while len(self._diffs) > DIFF_CACHE:
                self._diffs.popitem(last=False)
        return view


class WorkspaceViews:
    """The real views of workspace `ws` (an Envs per call: settings changes are seen at once)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.image_views = ImageViews(ws.images)

    def envs(self) -> list[dict[str, Any]]:
        from sandbox.envs import Envs

        return [v.to_dict() for v in Envs(self.ws).ls()]

    def env(self, name: str) -> dict[str, Any]:
        from sandbox.envs import Envs

        envs = Envs(self.ws)
        return {**envs.view(name).to_dict(), "events": envs.events(name, limit=10)}

    def images(self) -> list[dict[str, Any]]:
        return self.image_views.images()

    def image_diff(self, a: str, b: str) -> dict[str, Any]:
        return self.image_views.image_diff(a, b)

    def logs(self, name: str, index: int, lines: int) -> list[str]:
        from sandbox.envs import Envs

        return read_lines(Envs(self.ws).logs_argv(name, index, False, lines), lines)


def read_lines(argv: list[str], lines: int) -> list[str]:
    """The last `lines` lines argv prints (of at most 8 MiB of output, the last MiB of it kept),
    undecodable bytes replaced. SandboxError when it cannot run, fails, or takes over LOG_TIMEOUT
    seconds (it is killed then)."""
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
