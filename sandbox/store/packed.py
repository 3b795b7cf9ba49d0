"""Compressed copies of layer blobs, made once and reused by every ship to any host (as a registry
keeps its layers compressed): `packed/CODEC/RAWHEX-OWNHEX` in the store.

RAWHEX is the blob's digest (the sha256 of the raw tar), OWNHEX the sha256 of the compressed file's
own bytes. A copy is made from its blob with the blob's bytes hashed on their way into the
compressor (a blob whose bytes are not its digest is refused and nothing is kept) and the
compressor's output hashed on its way into a temp file of the store: fsync, rename, so a copy is
whole or absent. A copy is used only through a hard link in the caller's dir whose bytes hash to
OWNHEX: a copy that does not is removed and made again, never handed out. Making and checking hold
a lock per codec, so two ships at once make a copy once. Copies go with their blob
(ImageStore.remove), a dead maker's temp files with ImageStore.clean. The host still decompresses
every blob and checks its raw sha256 before it keeps it: a copy saves the compression, not a check.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sandbox.errors import StoreError
from sandbox.fsutil import file_lock, fsync_dir, pipe_through
from sandbox.store.store import FILE_MODE, HEX64, ImageStore

#: what a copy can be: zstd (-3, on every core) or gzip (level 1, zlib)
CODECS = ("zstd", "gzip")
CHUNK = 1 << 20


def packed_copy(store: ImageStore, codec: str, digest: str, into: Path) -> tuple[Path, str]:
    """A checked compressed copy of blob `digest`, as a hard link in `into` (a dir of the same
    filesystem, the caller's to remove): what a gc or a rebuild of the copy does meanwhile does not
    touch it. And how it came: `kept` (from an earlier ship), `made`, or `remade` (a kept one was
    corrupt: removed)."""
    if codec not in CODECS:
        raise StoreError(f"no compressed copies in {codec!r}", hint=" or ".join(CODECS))
    raw = store.blob_path(digest).name
    d = store.packed_dir(codec)
    how = "made"
    with file_lock(d / ".lock"):
        for p in sorted(d.glob(f"{raw}-*")):
            own = p.name.partition("-")[2]
            if not HEX64.fullmatch(own):
                continue
            link = into / f"{codec}-{p.name}"
            with contextlib.suppress(FileNotFoundError):  # a gc took it: the next one, or make it
                os.link(p, link, follow_symlinks=False)
                if stat.S_ISREG(link.lstat().st_mode) and _sha256(link) == own:
                    return link, "kept"
                link.unlink()
                p.unlink()
                how = "remade"
        made = _make(store, codec, digest, d)
        link = into / f"{codec}-{made.name}"
        os.link(made, link)
        return link, how


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _make(store: ImageStore, codec: str, digest: str, d: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".tmp-{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as out:
            raw, own = (_zstd if codec == "zstd" else _gzip)(store.blob_path(digest), out)
            out.flush()
            os.fsync(out.fileno())
        if "sha256:" + raw != digest:
            raise StoreError(
                f"blob {digest} is corrupt in the local store (sha256 {raw})", hint="rebuild the image"
            )
        os.chmod(tmp, FILE_MODE)
        path = d / f"{digest[7:]}-{own}"
        os.replace(tmp, path)
        fsync_dir(d)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _gzip(src: Path, out: IO[bytes]) -> tuple[str, str]:
    raw, own, z = hashlib.sha256(), hashlib.sha256(), zlib.compressobj(1, zlib.DEFLATED, 31)
    with open(src, "rb") as f:
        while chunk := f.read(CHUNK):
            raw.update(chunk)
            data = z.compress(chunk)
            own.update(data)
            out.write(data)
    data = z.flush()
    own.update(data)
    out.write(data)
    return raw.hexdigest(), own.hexdigest()


def _zstd(src: Path, out: IO[bytes]) -> tuple[str, str]:
    """zstd -3 on every core, fed by a thread that hashes the blob's bytes on their way in; this
    thread hashes and writes what it makes."""
    raw, own = hashlib.sha256(), hashlib.sha256()

    def take(data: bytes) -> None:
        own.update(data)
        out.write(data)

    code, err, failed = pipe_through(["zstd", "-3", "-T0", "-q", "-c"], _read(src, raw), take)
    if failed is not None:
        raise StoreError(f"cannot read blob {src.name}: {failed}", hint="rebuild the image")
    if code:
        raise StoreError(f"zstd failed on blob {src.name}: {err or 'exit ' + str(code)}")
    return raw.hexdigest(), own.hexdigest()


def _read(src: Path, h: hashlib._Hash) -> Iterator[bytes]:
    with open(src, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            yield chunk
