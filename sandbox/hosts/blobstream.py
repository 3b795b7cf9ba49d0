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
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

from sandbox.errors import StoreError
from sandbox.events import Event, EventSink
from sandbox.hosts.agentcall import AgentPrefix, agent_call, agent_talk
from sandbox.hosts.transport import Answers, Transport
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


#: what a host is sent: the blobs, the manifest (its form and bytes), and the host's progress line
Sending = tuple[list[Part], tuple[list[str], bytes], "Progress"]
#: the longest answer to a `have` frame read (a have of MAX_DIGESTS digests is about 8 MB)
MAX_HAVE_ANSWER = 16 << 20


def ask_and_send(
    t: Transport,
    agent: AgentPrefix,
    digest: str,
    question: dict[str, Any],
    decide: Callable[[dict[str, Any]], Sending | None],
    timeout: float,
) -> tuple[Any, int]:
    """One `recv-image` request that opens with a `have` frame (`question`), gives the host's
    answer to `decide` and sends what it returns (None: nothing), all in one ssh session and one
    agent start. The agent's final answer and the bytes that went on the wire; the host's error (a
    corrupt blob, a stream cut short, no answer to the question) is raised here, and so is what
    `decide` raises."""
    sent = [0]

    def talk(stdin: IO[bytes], answers: Answers) -> None:
        fd, ask = stdin.fileno(), json.dumps(question).encode()
        _write_all(fd, f"have {len(ask)}\n".encode() + ask)
        try:
            doc = json.loads(answers.readline(MAX_HAVE_ANSWER))
        except ValueError:
            doc = None
        have = doc.get("have") if isinstance(doc, dict) else None
        if not isinstance(have, dict):
            return  # no answer to the question: the host's error (or ssh's) is what it says instead
        sending = decide(have)
        if sending is None:
            _write_all(fd, b"end\n")
        else:
            sent[0] = _frames(fd, *sending)

    return agent_talk(t, agent, "recv-image", [digest], talk, timeout), sent[0]


def send_image(t: Transport, agent: AgentPrefix, digest: str, sending: Sending) -> int:
    """Send the blobs and the manifest in one `recv-image` request; the bytes that went on the
    wire. A thread writes the frames into a pipe that is ssh's stdin; the host's answer (or its
    error: a corrupt blob, a stream cut short) is raised here."""
    r, w = os.pipe()
    sent = [0]

    def pump() -> None:
        try:
            sent[0] = _frames(w, *sending)
        except OSError:
            pass  # the host stopped reading (it refused the request): its answer says why
        finally:
            os.close(w)

    thread = threading.Thread(target=pump, name=f"ship-{t.name}", daemon=True)
    with contextlib.ExitStack() as cleanup:
        thread.start()
        cleanup.callback(thread.join)  # after the read end is closed: a blocked pump gets EPIPE
        with os.fdopen(r, "rb", buffering=0) as stdin:
            timeout = request_timeout(sum(p.size for p in sending[0]))
            agent_call(t, agent, "recv-image", [digest], stdin=stdin, timeout=timeout)
    return sent[0]


def request_timeout(size: int) -> float:
    """How long a request that carries `size` raw bytes may take."""
    return BLOB_TIMEOUT_BASE + size / 1e6 * BLOB_TIMEOUT_PER_MB


def _frames(w: int, parts: list[Part], manifest: tuple[list[str], bytes], progress: Progress) -> int:
    """The frames of `parts`, then the manifest's and `end`, into `w`; the bytes sent. OSError when
    the host stops reading."""
    form, data = manifest
    sent = 0
    for part in parts:
        wire, base = part.wire.stat().st_size, progress.raw
        _write_all(w, f"blob {part.digest} {part.size} {part.codec} {wire}\n".encode())
        with open(part.wire, "rb") as src:
            _send_body(src.fileno(), w, wire, partial(_advance, progress, base, part.size, wire))
        sent += wire
        progress.blob_done(base + part.size)
    header = f"manifest {form[0]} {form[1] if len(form) > 1 else '-'} {len(data)}\n"
    _write_all(w, header.encode() + data + b"end\n")
    return sent + len(data)


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
