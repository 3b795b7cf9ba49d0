"""What goes on the wire to a host: an image's missing blobs and its manifest as the frames of one
`recv-image` request (sandbox/hostagent/imagerecv.py reads them), each blob from its file as it is
or from its compressed copy, made once and kept in the store for every ship to any host; and the
per-host progress lines. ship.py decides what goes where.

The bodies go from the page cache into ssh's stdin pipe by sendfile(2): no byte is copied through
this process, and one agent call (one ssh session, one Python start on the host) carries them all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sandbox.errors import StoreError
from sandbox.events import Event, EventSink
from sandbox.hosts.agentcall import AgentPrefix, agent_call
from sandbox.hosts.transport import Transport
from sandbox.store import ImageStore
from sandbox.store.packed import packed_copy

CHUNK = 1 << 20
#: sendfile(2) moves this much per call: progress is updated between calls
SEND_STEP = 8 << 20
#: progress events per host at most this often (the last one always comes)
PROGRESS_EVERY = 0.3
#: a request may take this long plus a second per MB (1 MB/s is a slow link; a stuck one still ends)
BLOB_TIMEOUT_BASE, BLOB_TIMEOUT_PER_MB = 120.0, 1.0
#: codecs a blob is packed with once for every host that takes them (`none` goes as it is)
PACKED = ("zstd", "gzip")


@dataclass(frozen=True)
class Part:
    """One blob as it travels: `size` raw bytes, sent as the file `wire` (itself, or packed)."""

    digest: str
    size: int
    codec: str
    wire: Path


def send_image(
    t: Transport,
    agent: AgentPrefix,
    digest: str,
    parts: list[Part],
    manifest: tuple[list[str], bytes],
    progress: Progress,
) -> int:
    """Send `parts` and the manifest (its form, its bytes) in one `recv-image` request; the bytes
    that went on the wire. A thread writes the frames into a pipe that is ssh's stdin; the host's
    answer (or its error: a corrupt blob, a stream cut short) is raised here."""
    wires = [p.wire.stat().st_size for p in parts]
    form, data = manifest
    r, w = os.pipe()
    sent = [0]

    def pump() -> None:
        try:
            for part, wire in zip(parts, wires, strict=True):
                base = progress.raw
                _write_all(w, f"blob {part.digest} {part.size} {part.codec} {wire}\n".encode())
                with open(part.wire, "rb") as src:
                    _send_body(src.fileno(), w, wire, partial(_advance, progress, base, part.size, wire))
                sent[0] += wire
                progress.blob_done(base + part.size)
            header = f"manifest {form[0]} {form[1] if len(form) > 1 else '-'} {len(data)}\n"
            _write_all(w, header.encode() + data + b"end\n")
            sent[0] += len(data)
        except OSError:
            pass  # the host stopped reading (it refused the request): its answer says why
        finally:
            os.close(w)

    thread = threading.Thread(target=pump, name=f"ship-{t.name}", daemon=True)
    with contextlib.ExitStack() as cleanup:
        thread.start()
        cleanup.callback(thread.join)  # after the read end is closed: a blocked pump gets EPIPE
        with os.fdopen(r, "rb", buffering=0) as stdin:
            timeout = BLOB_TIMEOUT_BASE + sum(p.size for p in parts) / 1e6 * BLOB_TIMEOUT_PER_MB
            agent_call(t, agent, "recv-image", [digest], stdin=stdin, timeout=timeout)
    return sent[0]


def _advance(progress: Progress, base: int, size: int, wire: int, done: int) -> None:
    progress.raw = base + size * done // max(1, wire)
    progress.emit()


def _send_body(src: int, dst: int, n: int, moved: Callable[[int], None]) -> None:
    """n bytes of file `src` (from its start) into pipe `dst`: sendfile(2), or read/write where the
    kernel refuses it; `moved(total so far)` after every step."""
    offset = 0
    try:
        while offset < n:
            k = os.sendfile(dst, src, offset, min(SEND_STEP, n - offset))
            if k == 0:
                raise StoreError("a blob's file got shorter while it was sent", hint="ship again")
            offset += k
            moved(offset)
    except OSError as e:
        if offset or e.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        os.lseek(src, 0, os.SEEK_SET)
        while offset < n and (chunk := os.read(src, min(CHUNK, n - offset))):
            _write_all(dst, chunk)
            offset += len(chunk)
            moved(offset)


def pack(store: ImageStore, codec: str, blobs: list[str], tmp: Path, emit: EventSink) -> dict[str, Path]:
    """Each blob's compressed copy in `codec` (zstd -3 on every core, or gzip level 1), as a link in
    `tmp`: what every host that takes `codec` is sent. A copy is made once, at the first ship that
    needs it, and kept in the store for every later ship to any host (sandbox/store/packed.py)."""
    t0, out, made = time.monotonic(), {}, 0
    emit(Event("progress", phase="ship", message=f"compressed copies of {len(blobs)} blob(s) ({codec})"))
    for d in blobs:
        out[d], how = packed_copy(store, codec, d, tmp)
        made += how != "kept"
        if how == "remade":
            why = f"the kept {codec} copy of {d} was corrupt: made again"
            emit(Event("warning", phase="ship", message=why))
    took = f"{made} made, {len(blobs) - made} kept from earlier, {time.monotonic() - t0:.1f}s"
    emit(Event("log", phase="ship", message=f"{codec}: {took}"))
    return out


def local_zstd() -> bool:
    return shutil.which("zstd") is not None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
