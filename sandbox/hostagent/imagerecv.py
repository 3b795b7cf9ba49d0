"""Receiving an image's missing blobs and its manifest in one request: `recv-image DIGEST`.

One agent call per host instead of one per blob (each call is an ssh session and a Python start,
~0.2 s, and more while the other hosts stream). stdin is a sequence of frames, each a header line
and exactly WIRE bytes after it:

    blob sha256:HEX SIZE CODEC WIRE\n     the blob (SIZE bytes) in CODEC (zstd, gzip or none)
    manifest FORM BASE WIRE\n             manifest DIGEST as FORM (gzip, or zstd-patch against
                                          manifest BASE, which this host holds; BASE is - for gzip)
    end\n

The stream may open with a `have WIRE\n` frame, a `have` request (JSON, storeops.have_answer): the
agent answers it at once with one line `{"have": ...}` on stdout, and the control side sends the
frames of what is missing in the same request (one ssh session and one agent start per host).

Every blob is decompressed straight into a temp file of the store and renamed into place only when
its sha256 is the digest it was sent as (store.put_blob), so a blob in the store is a verified
blob. A blob that arrives corrupt does not stop the stream: its frame is read to its end and the
next blob is taken; at the end the request fails naming every corrupt blob (BlobCorrupt), and the
control side sends what is still missing once more. A frame cut short, a malformed header, or no
`end` fails the request at once. The manifest is accepted last, only when every blob it names is
here (storeops.take_manifest).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

from sandbox.fsutil import pipe_through, wide_pipe
from sandbox.hostagent.main import AgentUsage, op
from sandbox.hostagent.storeops import (
    CHUNK,
    MAX_BLOB,
    MAX_DIGESTS,
    MAX_MANIFEST,
    digest_arg,
    have_answer,
    store,
    take_manifest,
)
from sandbox.store.store import BlobCorrupt

#: a header line is short; a longer one is not a header
MAX_HEADER = 256
#: a have request names at most MAX_DIGESTS digests of 71 characters (and their JSON punctuation)
MAX_HAVE = MAX_DIGESTS * 80 + 4096
_NUMBER = re.compile(r"[0-9]{1,15}")


class StreamCut(BlobCorrupt):
    """The stream ended inside a frame or before `end`: nothing after it can be read."""


class Frame:
    """The WIRE bytes after a header, in chunks of at most CHUNK; a stream that ends before them
    raises BlobCorrupt (cut short). `drain()` reads what is left, so the next header is found."""

    def __init__(self, src: IO[bytes], wire: int, what: str) -> None:
        self.src, self.left, self.what = src, wire, what

    def chunks(self) -> Iterator[bytes]:
        while self.left > 0:
            chunk = self.src.read(min(CHUNK, self.left))
            if not chunk:
                raise StreamCut(
                    f"{self.what} arrived cut short ({self.left} bytes missing)", hint="send it again"
                )
            self.left -= len(chunk)
            yield chunk

    def drain(self) -> None:
        for _ in self.chunks():
            pass


class _Bounded:
    """Writes to the store's temp file, refusing a blob longer than it was announced (a stream
    that does not end must not fill the host's disk)."""

    def __init__(self, f: IO[bytes], digest: str, size: int) -> None:
        self.f, self.digest, self.size, self.n = f, digest, size, 0

    def write(self, data: bytes) -> None:
        self.n += len(data)
        if self.n > self.size:
            raise BlobCorrupt(
                f"blob {self.digest} arrived corrupt (more than the {self.size} bytes announced)",
                hint="send it again",
            )
        self.f.write(data)


def _none(frame: Frame, out: _Bounded) -> str | None:
    for chunk in frame.chunks():
        out.write(chunk)
    return None


def _gzip(frame: Frame, out: _Bounded) -> str | None:
    d = zlib.decompressobj(wbits=31)  # gzip framing; CRC and length are checked at the end
    try:
        for chunk in frame.chunks():
            while chunk and not d.eof:  # max_length bounds memory whatever the ratio (a "zip bomb")
                out.write(d.decompress(chunk, CHUNK))
                chunk = d.unconsumed_tail
    except zlib.error as e:
        return f"gzip: {e}"
    return None if d.eof else "gzip stream cut short"


def _zstd(frame: Frame, out: _Bounded) -> str | None:
    """zstd from the host's CLI (no zstd in the stdlib of the hosts' Python): a thread feeds it the
    frame, this one writes what it makes. A zstd that gives up early (corrupt input) still has its
    frame read to the end by the feeder."""
    code, err, cut = pipe_through(["zstd", "-d", "-c", "-q"], frame.chunks(), out.write)
    if cut is not None:
        raise cut
    return f"zstd: {err or 'exit ' + str(code)}" if code else None


_DECODERS: dict[str, Callable[[Frame, _Bounded], str | None]] = {"none": _none, "gzip": _gzip, "zstd": _zstd}


def _header(src: IO[bytes]) -> list[str]:
    line = src.readline(MAX_HEADER + 1)
    if not line.endswith(b"\n") or len(line) > MAX_HEADER:
        what = "the stream ended without `end`" if not line else f"malformed frame header {line[:80]!r}"
        raise StreamCut(f"image stream cut short: {what}", hint="send it again")
    try:
        return line.decode("ascii").split()
    except UnicodeDecodeError as e:
        raise AgentUsage(f"malformed frame header {line[:80]!r}") from e


def _number(value: str, bound: int, what: str) -> int:
    if not _NUMBER.fullmatch(value) or int(value) > bound:
        raise AgentUsage(f"malformed {what} {value[:40]!r}")
    return int(value)


def receive_blob(src: IO[bytes], fields: list[str]) -> str | None:
    """One `blob DIGEST SIZE CODEC WIRE` frame into the store; why it was refused, or None. Only a
    frame that cannot be read to its end raises (the stream is lost)."""
    if len(fields) != 4:
        raise AgentUsage("a blob frame is `blob DIGEST SIZE CODEC WIRE`")
    digest, codec = digest_arg(fields[0]), fields[2]
    size, wire = _number(fields[1], MAX_BLOB, "blob size"), _number(fields[3], MAX_BLOB, "frame length")
    if codec not in _DECODERS:
        raise AgentUsage(f"unknown compression {codec[:40]!r}", hint="zstd, gzip or none")
    if codec == "zstd" and not shutil.which("zstd"):
        raise AgentUsage("this host has no zstd", hint="send gzip (the host's `have` says which it has)")
    frame = Frame(src, wire, f"blob {digest}")
    problem: list[str | None] = [None]

    def write(f: IO[bytes]) -> None:
        problem[0] = _DECODERS[codec](frame, _Bounded(f, digest, size))

    # a decoder's complaint alone does not reject: the sha256 decides (bytes that hash to the digest
    # are the blob); a complaint with a wrong hash is in the error for the one who reads it
    try:
        store().put_blob(write, expect=digest)
    except StreamCut:
        raise
    except BlobCorrupt as e:
        frame.drain()  # the next frame starts after this one's WIRE bytes
        return e.message + (f" ({problem[0][:300]})" if problem[0] else "")
    frame.drain()  # trailing bytes after a complete compressed stream: read through, ignored
    return None


def _answer_have(src: IO[bytes], wire: int) -> None:
    data = b"".join(Frame(src, wire, "the have request").chunks())
    try:
        request = json.loads(data)
    except ValueError as e:
        raise AgentUsage(f"the have request is not JSON: {str(e)[:200]}") from e
    sys.stdout.write(json.dumps({"have": have_answer(request)}) + "\n")
    sys.stdout.flush()


@op("recv-image")
def recv_image(args: list[str]) -> dict[str, Any]:
    """`recv-image DIGEST`, the frames on stdin (see the module's doc)."""
    if len(args) != 1:
        raise AgentUsage("recv-image wants DIGEST")
    digest = digest_arg(args[0])
    src = sys.stdin.buffer
    wide_pipe(sys.stdin.fileno())
    stored: list[str] = []
    corrupt: list[str] = []
    manifest = False
    for n in range(MAX_DIGESTS + 3):
        fields = _header(src)
        kind = fields[0] if fields else ""
        if kind == "end" and len(fields) == 1:
            break
        if kind == "have" and len(fields) == 2 and n == 0:  # only as the first frame
            _answer_have(src, _number(fields[1], MAX_HAVE, "have request length"))
            continue
        if kind == "blob":
            why = receive_blob(src, fields[1:])
            (corrupt if why else stored).append(why or fields[1])
        elif kind == "manifest" and len(fields) == 4 and not manifest:
            form, base, wire = fields[1], fields[2], _number(fields[3], MAX_MANIFEST, "manifest length")
            data = b"".join(Frame(src, wire, f"manifest {digest}").chunks())
            if not corrupt:  # it names those blobs: it would be refused
                take_manifest(digest, [form] if base == "-" else [form, base], data)
                manifest = True
        else:
            raise AgentUsage(f"malformed frame header {' '.join(fields)[:80]!r}")
    else:
        raise AgentUsage(f"more than {MAX_DIGESTS} frames")
    if corrupt:
        raise BlobCorrupt("; ".join(corrupt)[:4000], hint="send it again")
    return {"stored": stored, "manifest": manifest}
