"""Streaming one blob to a host: from the file itself (ssh's stdin), through a local zstd, or gzipped
by zlib; and the per-host progress lines shipping shows. ship.py decides what goes where."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from sandbox.events import Event, EventSink
from sandbox.hosts.agentcall import AgentPrefix, agent_call
from sandbox.hosts.transport import Transport

CHUNK = 1 << 20
#: progress events per host at most this often (the last one always comes)
PROGRESS_EVERY = 0.3
#: a blob may take this long plus a second per MB (1 MB/s is a slow link; a stuck one still ends)
BLOB_TIMEOUT_BASE, BLOB_TIMEOUT_PER_MB = 120.0, 1.0


def send_blob(
    t: Transport,
    agent: AgentPrefix,
    digest: str,
    path: Path,
    size: int,
    codec: str,
    progress: Progress,
    packed: Path | None = None,
) -> int:
    """Stream one blob to the host through a pipe fed by a thread (from `packed`, its zstd form made
    once for every host, when given); the bytes that went on the wire."""
    if packed is not None or codec == "none":
        return _send_file(t, agent, digest, packed or path, size, codec, progress)
    with open(path, "rb") as src, contextlib.ExitStack() as cleanup:
        if codec == "zstd":
            proc = subprocess.Popen(
                ["zstd", "-3", "-T0", "-c", "-q"],
                stdin=src,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            cleanup.callback(_reap, proc)
            out = proc.stdout
            assert out is not None
            chunks: Iterator[bytes] = iter(lambda: out.read(CHUNK), b"")
            # zstd reads the file through our open file: its offset is how far the raw bytes got
            raw_done: Callable[[], int] = lambda: min(size, os.lseek(src.fileno(), 0, os.SEEK_CUR))  # noqa: E731
        else:
            counted = [0]
            chunks = _gzip_chunks(src, counted) if codec == "gzip" else _file_chunks(src, counted)
            raw_done = lambda: counted[0]  # noqa: E731
        base, wire = progress.raw, [0]
        r, w = os.pipe()

        def pump() -> None:
            try:
                for chunk in chunks:
                    _write_all(w, chunk)
                    wire[0] += len(chunk)
                    progress.raw = base + raw_done()
                    progress.emit()
            except OSError:
                pass  # the host stopped reading (it refused the blob): its answer says why
            finally:
                os.close(w)

        thread = threading.Thread(target=pump, name=f"ship-{t.name}", daemon=True)
        thread.start()
        cleanup.callback(thread.join)  # after the read end is closed: a blocked pump gets EPIPE
        with os.fdopen(r, "rb", buffering=0) as stdin:
            timeout = BLOB_TIMEOUT_BASE + size / 1e6 * BLOB_TIMEOUT_PER_MB
            agent_call(t, agent, "recv-blob", [digest, str(size), codec], stdin=stdin, timeout=timeout)
    return wire[0]


def _send_file(
    t: Transport, agent: AgentPrefix, digest: str, path: Path, size: int, codec: str, progress: Progress
) -> int:
    """A file that goes as it is (the blob, or its zstd form made once for every host): it is ssh's
    stdin, so no byte passes through this process; progress is how far ssh has read it."""
    whole = max(1, path.stat().st_size)
    base = progress.raw
    done = threading.Event()
    with open(path, "rb") as src:

        def watch() -> None:
            while not done.wait(PROGRESS_EVERY):
                with contextlib.suppress(OSError):
                    progress.raw = base + size * os.lseek(src.fileno(), 0, os.SEEK_CUR) // whole
                    progress.emit()

        watcher = threading.Thread(target=watch, name=f"ship-{t.name}", daemon=True)
        watcher.start()
        try:
            timeout = BLOB_TIMEOUT_BASE + size / 1e6 * BLOB_TIMEOUT_PER_MB
            agent_call(t, agent, "recv-blob", [digest, str(size), codec], stdin=src, timeout=timeout)
        finally:
            done.set()
            watcher.join()
    return whole


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """End the local zstd: it has finished when the host took the blob; killed when the host gave up."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout:
        proc.stdout.close()


def local_zstd() -> bool:
    return shutil.which("zstd") is not None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _file_chunks(f: IO[bytes], counted: list[int]) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        counted[0] += len(chunk)
        yield chunk


def _gzip_chunks(f: IO[bytes], counted: list[int]) -> Iterator[bytes]:
    """gzip level 1: zlib releases the GIL while it compresses, so hosts compress in parallel."""
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    for chunk in _file_chunks(f, counted):
        if out := z.compress(chunk):
            yield out
    yield z.flush()


class Progress:
    """'web1: 2/5 blobs, 120/250 MB', at most every PROGRESS_EVERY seconds per host."""

    def __init__(self, host: str, blobs: int, total: int, emit: EventSink) -> None:
        self.host, self.blobs, self.total, self._emit = host, blobs, total, emit
        self.done, self.raw, self.last = 0, 0, 0.0

    def blob_done(self, raw: int) -> None:
        self.done += 1
        self.raw = raw
        self.emit()

    def emit(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        unit, div = size_unit(self.total)
        digits = 0 if self.total >= 10 * div else 1
        amount = f"{self.raw / div:.{digits}f}/{self.total / div:.{digits}f} {unit}"
        message = f"{self.host}: {self.done}/{self.blobs} blobs, {amount}"
        self._emit(
            Event(
                "progress",
                phase="ship",
                message=message,
                current=self.raw,
                total=self.total,
                data={"host": self.host, "blobs": self.done, "blobs_total": self.blobs},
            )
        )


def size_unit(n: int) -> tuple[str, float]:
    return ("MB", 1e6) if n >= 1e6 else ("KB", 1e3)
