"""The host's image store ops: what it has, and receiving blobs and manifests by digest.

The control side (sandbox/hosts/ship.py) asks `have`, then streams each missing blob compressed
(`recv-blob DIGEST SIZE COMPRESSION`) and the manifest last (`recv-manifest DIGEST`). A blob is
decompressed straight into a temp file of the store and renamed into place only when its sha256 is
the digest it was sent as, so the store holds verified blobs only and "present" means "verified".
A manifest is accepted only when every blob it names is present: a manifest on a host means the
image can be used there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from typing import IO, Any

from sandbox.errors import StoreError
from sandbox.hostagent.main import AgentUsage, host_root, op, read_request
from sandbox.store.store import BlobCorrupt, ImageStore, canonical_json

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")  # fullmatch: "$" would let "x\n" through
CHUNK = 1 << 20
#: a bound on what one request may make the host write or hold in memory
MAX_BLOB = 1 << 40
MAX_MANIFEST = 64 << 20
MAX_DIGESTS = 100_000


def store() -> ImageStore:
    return ImageStore(host_root() / "store")


def digest_arg(value: object) -> str:
    """`value` if it is sha256:<64 lower-case hex>, checked before it names any path."""
    if not isinstance(value, str) or not DIGEST.fullmatch(value):
        raise AgentUsage(f"malformed digest {str(value)[:80]!r}", hint="a digest is sha256:<64 hex digits>")
    return value


def _digest_list(request: Any, key: str) -> list[str]:
    items = request.get(key, []) if isinstance(request, dict) else None
    if not isinstance(items, list) or len(items) > MAX_DIGESTS:
        raise AgentUsage(f"`have` wants {{{key!r}: [digests]}}", hint="update the control side")
    return [digest_arg(d) for d in items]


@op("caps")
def caps(args: list[str]) -> dict[str, Any]:
    """What this host can decompress besides gzip (stdlib): the control side picks the codec."""
    return {"zstd": shutil.which("zstd") is not None}


@op("have")
def have(args: list[str]) -> dict[str, Any]:
    request = read_request()
    blobs, manifests = _digest_list(request, "blobs"), _digest_list(request, "manifests")
    s = store()
    s.clean()  # temp files of an agent killed mid-blob (its connection dropped): a ship starts here
    return {
        "blobs": [d for d in blobs if s.blob_path(d).is_file()],
        "manifests": [d for d in manifests if s.manifest_path(d).is_file()],
        "recent": _recent_manifests(s),
        "zstd": shutil.which("zstd") is not None,  # what `caps` says: one round trip less
    }


def _recent_manifests(s: ImageStore, n: int = 20) -> list[str]:
    """The newest manifests here: a new one is sent as a zstd patch against one of them."""
    d = s.root / "manifests"
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.suffix == ".json" and DIGEST.fullmatch("sha256:" + p.stem)]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return ["sha256:" + p.stem for p in found[:n]]


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


def _wide_pipe(fd: int) -> None:
    """A 1 MB pipe buffer on `fd` (when it is a pipe): 16 times fewer wake-ups than the default 64 KB
    while a blob streams in."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK)


def _recv_none(out: _Bounded) -> str | None:
    fd = sys.stdin.fileno()
    _wide_pipe(fd)
    while chunk := os.read(fd, CHUNK):
        out.write(chunk)
    return None


def _recv_gzip(out: _Bounded) -> str | None:
    d = zlib.decompressobj(wbits=31)  # gzip framing; CRC and length are checked at the end
    src = sys.stdin.buffer
    try:
        while chunk := src.read(CHUNK):
            while chunk:  # max_length bounds memory whatever the ratio (a "zip bomb")
                out.write(d.decompress(chunk, CHUNK))
                chunk = d.unconsumed_tail
            if d.eof:
                break
        if not d.eof:
            return "gzip stream cut short"
    except zlib.error as e:
        return f"gzip: {e}"
    return None


def _recv_zstd(out: _Bounded) -> str | None:
    """zstd from the host's CLI (no zstd in the stdlib of the hosts' Python) reading our stdin."""
    _wide_pipe(sys.stdin.fileno())
    proc = subprocess.Popen(
        ["zstd", "-d", "-c", "-q"], stdin=sys.stdin.fileno(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    _wide_pipe(proc.stdout.fileno())
    try:
        while chunk := os.read(proc.stdout.fileno(), CHUNK):
            out.write(chunk)
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        proc.wait()
    return f"zstd: {err or 'exit ' + str(proc.returncode)}" if proc.returncode else None


_RECEIVERS = {"none": _recv_none, "gzip": _recv_gzip, "zstd": _recv_zstd}


@op("recv-blob")
def recv_blob(args: list[str]) -> dict[str, Any]:
    """`recv-blob DIGEST SIZE COMPRESSION`, the compressed blob on stdin."""
    if len(args) != 3:
        raise AgentUsage("recv-blob wants DIGEST SIZE COMPRESSION")
    digest, size_arg, compression = digest_arg(args[0]), args[1], args[2]
    if not re.fullmatch(r"[0-9]{1,15}", size_arg) or int(size_arg) > MAX_BLOB:
        raise AgentUsage(f"malformed blob size {size_arg[:40]!r}")
    if compression not in _RECEIVERS:
        raise AgentUsage(f"unknown compression {compression[:40]!r}", hint="zstd, gzip or none")
    if compression == "zstd" and not shutil.which("zstd"):
        raise AgentUsage("this host has no zstd", hint="send gzip (the control side asks `caps` first)")
    size = int(size_arg)
    problem: list[str | None] = [None]

    def write(f: IO[bytes]) -> None:
        problem[0] = _RECEIVERS[compression](_Bounded(f, digest, size))

    # a decompressor's complaint alone does not reject: the sha256 decides (bytes that hash to the
    # digest are the blob); a complaint with a wrong hash is in the error for the one who reads it
    try:
        _, n, _ = store().put_blob(write, expect=digest)
    except BlobCorrupt as e:
        if problem[0]:
            e.message = e.args[0] + f" ({problem[0][:300]})"
        raise
    return {"digest": digest, "size": n}


@op("recv-manifest")
def recv_manifest(args: list[str]) -> dict[str, Any]:
    """`recv-manifest DIGEST [gzip | zstd-patch BASE]`, the manifest's bytes on stdin: gzipped (it
    lists every file of the image, megabytes of JSON), or a zstd patch against manifest BASE that
    this host holds (a rebuild's file list differs in a few lines: KB instead of MB). Its blobs must
    be here already."""
    if not (len(args) in (1, 2) and args[1:] in ([], ["gzip"])) and not (
        len(args) == 3 and args[1] == "zstd-patch"
    ):
        raise AgentUsage("recv-manifest wants DIGEST [gzip | zstd-patch BASE]")
    digest = digest_arg(args[0])
    data = sys.stdin.buffer.read(MAX_MANIFEST + 1)
    if args[1:2] == ["zstd-patch"]:
        base = store().manifest_path(digest_arg(args[2]))
        if not base.is_file():
            raise StoreError(f"manifest {args[2]} (the patch's base) is not here", hint="send it whole")
        p = subprocess.run(
            ["zstd", "-d", "-q", "-c", f"--patch-from={base}"], input=data, capture_output=True, check=False
        )
        if p.returncode != 0 or len(p.stdout) > MAX_MANIFEST:
            raise BlobCorrupt(f"manifest {digest} arrived corrupt (zstd patch: {p.stderr.decode()[:200]})")
        data = p.stdout
    elif args[1:] == ["gzip"]:
        try:
            d = zlib.decompressobj(wbits=31)
            data = d.decompress(data, MAX_MANIFEST + 1)
        except zlib.error as e:
            raise BlobCorrupt(f"manifest {digest} arrived corrupt (gzip: {e})", hint="send it again") from e
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if len(data) > MAX_MANIFEST or got != digest:
        raise BlobCorrupt(f"manifest {digest} arrived corrupt (sha256 {got[7:]})", hint="send it again")
    try:
        manifest = json.loads(data)
        layers = [digest_arg(layer["digest"]) for layer in manifest["layers"]]
    except (ValueError, TypeError, KeyError, AgentUsage) as e:
        raise AgentUsage(f"manifest {digest} is not an image manifest: {str(e)[:200]}") from e
    if canonical_json(manifest) != data:  # put_manifest stores the canonical form: it must be this one
        raise AgentUsage(f"manifest {digest} is not in canonical form", hint="update the control side")
    s = store()
    missing = [d for d in layers if not s.blob_path(d).is_file()]
    if missing:
        raise StoreError(
            f"manifest {digest} names {len(missing)} blob(s) this host lacks, first {missing[0]}",
            hint="ship the blobs first (sandbox/hosts/ship.py does)",
        )
    s.put_manifest(manifest)
    return {"digest": digest}
