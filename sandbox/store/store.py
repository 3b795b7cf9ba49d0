"""ImageStore: blobs, manifests, refs and the layer cache under `images/`.

Layout:
    blobs/sha256/<hex>          normalized layer tarballs
    layers/<hex>.json           a layer's file index (path → type, mode, owner, sha256)
    manifests/<hex>.json        image manifests; the image digest is sha256 of this file
    refs/<recipe>/<tag>         a digest per line ("latest" is moved by every build)
    cache/<kind>-<key>          layer cache: build inputs → blob digest
    packed/<codec>/<hex>-<own>  a blob compressed once for shipping to hosts (sandbox/store/packed.py)
    lxd/<hex>                   LXD's fingerprint of the image's unified tarball, as this store wrote
                                it (sandbox/imageformats/lxd.py: an LXD image is trusted by it)

Every write goes temp file → fsync → rename, so an interrupted build leaves
either nothing or a complete object; leftover temp files of dead processes
are removed by `clean()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sandbox.errors import NotFound, StoreError
from sandbox.fsutil import atomic_write, fsync_dir, pid_alive, private_dir

HEX64 = re.compile(r"[0-9a-f]{64}")  # fullmatch: "$" would let "x\n" through
TAG = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def canonical_json(doc: Any) -> bytes:
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


#: a blob goes to disk while it is written, this much at a time (fdatasync in a thread): the fsync
#: before its rename then waits for the last piece only, not for the whole blob
WRITEBACK_STEP = 32 << 20


class _HashingWriter:
    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0
        self._synced = 0
        self._syncing: threading.Thread | None = None

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        n = self.f.write(data)
        if self.size - self._synced >= WRITEBACK_STEP and not (self._syncing and self._syncing.is_alive()):
            self.f.flush()
            self._synced = self.size
            self._syncing = threading.Thread(target=_datasync, args=(self.f.fileno(),), daemon=True)
            self._syncing.start()
        return n

    def flush(self) -> None:
        self.f.flush()

    def settle(self) -> None:
        """Wait for the writeback in flight (before the file is closed)."""
        if self._syncing is not None:
            self._syncing.join()


def _datasync(fd: int) -> None:
    with contextlib.suppress(OSError):  # the fsync before the rename says what is wrong
        os.fdatasync(fd)


class BlobCorrupt(StoreError):
    """A received blob's bytes do not hash to the digest it was sent as (corrupt, cut short or too
    long); nothing of it is kept."""


@dataclass(frozen=True)
class ImageSummary:
    digest: str
    recipe: str
    refs: list[str]
    size: int
    packages: int
    files: int
    created: int


# the store is root's alone: a file that a recipe makes 0640 in the image is in a blob, and any host
# user who could read the blob could read the file (modes are not part of any digest)
DIR_MODE, FILE_MODE = 0o700, 0o600


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, *parts: str) -> Path:
        """A dir of the store, made on first write; the store root is closed to other host users."""
        private_dir(self.root, DIR_MODE)
        d = self.root.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        return d

    # -- paths -------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / _hex(digest)

    def manifest_path(self, digest: str) -> Path:
        return self.root / "manifests" / f"{_hex(digest)}.json"

    def layer_index_path(self, digest: str) -> Path:
        return self.root / "layers" / f"{_hex(digest)}.json"

    def packed_dir(self, codec: str) -> Path:
        """Where the compressed copies of blobs in `codec` are kept (made on first use)."""
        return self._dir("packed", codec)

    def lxd_fingerprint(self, digest: str) -> str | None:
        """The sha256 of the unified LXD tarball this store wrote for `digest`, if it wrote one."""
        try:
            fp = (self.root / "lxd" / _hex(digest)).read_text().strip()
        except FileNotFoundError:
            return None
        return fp if HEX64.fullmatch(fp) else None

    def put_lxd_fingerprint(self, digest: str, fingerprint: str) -> None:
        if not HEX64.fullmatch(fingerprint):
            raise StoreError(f"not a sha256: {fingerprint[:80]!r}")
        atomic_write(self._dir("lxd") / _hex(digest), (fingerprint + "\n").encode(), FILE_MODE)

    # -- writes ------------------------------------------------------------
    def put_blob(self, write: Callable[[IO[bytes]], Any], expect: str | None = None) -> tuple[str, int, Any]:
        """Stream a blob through `write(fileobj)`; store it under its sha256.

        With `expect` (a blob received from elsewhere), a digest other than `expect` raises
        BlobCorrupt before the rename: the store never holds a blob under a digest it does not have.
        Returns (digest, size, whatever `write` returned).
        """
        d = self._dir("blobs", "sha256")
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".tmp-{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as f:
                w = _HashingWriter(f)
                try:
                    result = write(w)  # type: ignore[arg-type]
                finally:
                    w.settle()
                f.flush()
                os.fsync(f.fileno())
            digest = "sha256:" + w.h.hexdigest()
            if expect is not None and digest != expect:
                raise BlobCorrupt(
                    f"blob {expect} arrived corrupt (sha256 {digest[7:]}, {w.size} bytes)",
                    hint="send it again; if it fails again, check the network and the host's disk",
                )
            os.chmod(tmp, FILE_MODE)  # the content digest covers the bytes, not the mode
            os.replace(tmp, self.blob_path(digest))
            fsync_dir(d)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return digest, w.size, result

    def put_layer_index(self, digest: str, index: dict[str, Any]) -> None:
        private_dir(self.root, DIR_MODE)
        atomic_write(self.layer_index_path(digest), canonical_json(index), FILE_MODE)

    def layer_index(self, digest: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.layer_index_path(digest).read_bytes())
        except FileNotFoundError as e:
            raise StoreError(f"layer {digest[:19]} has no index", hint="rebuild the image") from e
        return data

    def put_manifest(self, manifest: dict[str, Any]) -> str:
        data = canonical_json(manifest)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.manifest_path(digest)
        if not path.exists():
            private_dir(self.root, DIR_MODE)
            atomic_write(self._summary_path(digest), canonical_json(_summarize(manifest)), FILE_MODE)
            atomic_write(path, data, FILE_MODE)
        return digest

    def _summary_path(self, digest: str) -> Path:
        return self.root / "summaries" / f"{_hex(digest)}.json"

    def summary(self, digest: str) -> dict[str, Any]:
        """The manifest without its file index (small and fast to read: what `up` needs)."""
        try:
            data: dict[str, Any] = json.loads(self._summary_path(digest).read_bytes())
            return data
        except (OSError, ValueError):
            return _summarize(self.manifest(digest))

    def set_ref(self, recipe: str, tag: str, digest: str) -> None:
        if not TAG.fullmatch(tag):
            raise StoreError(f"invalid tag {tag!r}", hint="tags are lower-case letters, digits, . _ -")
        private_dir(self.root, DIR_MODE)
        atomic_write(self.root / "refs" / recipe / tag, (digest + "\n").encode(), FILE_MODE)

    def cache_get(self, kind: str, key: str) -> str | None:
        p = self.root / "cache" / f"{kind}-{key}"
        try:
            digest = p.read_text().strip()
        except FileNotFoundError:
            return None
        return digest if self.blob_path(digest).is_file() or self.manifest_path(digest).is_file() else None

    def cache_put(self, kind: str, key: str, digest: str) -> None:
        private_dir(self.root, DIR_MODE)
        atomic_write(self.root / "cache" / f"{kind}-{key}", (digest + "\n").encode(), FILE_MODE)

    # -- reads -------------------------------------------------------------
    def manifest(self, digest: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.manifest_path(digest).read_bytes())
        except FileNotFoundError as e:
            raise NotFound(f"image {digest} not found", hint="list images with `sandbox images`") from e
        return data

    def refs(self) -> Iterator[tuple[str, str, str]]:
        """(recipe, tag, digest) for every ref."""
        base = self.root / "refs"
        if not base.is_dir():
            return
        for recipe_dir in sorted(base.iterdir()):
            for tag in sorted(recipe_dir.iterdir()):
                if not tag.name.startswith("."):
                    yield recipe_dir.name, tag.name, tag.read_text().strip()

    def digests(self) -> list[str]:
        d = self.root / "manifests"
        if not d.is_dir():
            return []
        return sorted("sha256:" + p.stem for p in d.glob("*.json") if HEX64.fullmatch(p.stem))

    def resolve(self, ref: str) -> str:
        """A digest for `ref`: "web", "web:tag", "sha256:<hex>" or a unique hex prefix (>= 6)."""
        ref = ref.strip()
        hexpart = ref.removeprefix("sha256:")
        if re.fullmatch(r"[0-9a-f]{6,64}", hexpart) and (ref.startswith("sha256:") or len(hexpart) >= 6):
            hits = [d for d in self.digests() if d[7:].startswith(hexpart)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise NotFound(
                    f"image prefix {hexpart!r} is ambiguous ({len(hits)} images)", hint="give more digits"
                )
            if ref.startswith("sha256:"):
                raise NotFound(f"image {ref} not found", hint="list images with `sandbox images`")
        recipe, _, tag = ref.partition(":")
        tag = tag or "latest"
        if not TAG.fullmatch(recipe) or not TAG.fullmatch(tag):
            raise NotFound(
                f"{ref!r} is not an image reference",
                hint="use RECIPE, RECIPE:TAG, sha256:DIGEST or a digest prefix",
            )
        p = self.root / "refs" / recipe / tag
        try:
            digest = p.read_text().strip()
        except FileNotFoundError as e:
            raise NotFound(f"image {ref!r} not found", hint=f"build it with `sandbox build {recipe}`") from e
        if not self.manifest_path(digest).is_file():
            raise NotFound(
                f"ref {ref!r} points to a missing image {digest}", hint=f"rebuild: sandbox build {recipe}"
            )
        return digest

    def summaries(self, known: dict[str, ImageSummary] | None = None) -> list[ImageSummary]:
        """One row per image. `known` (digest -> row, kept by the caller) spares reading the
        manifests again: all but the refs of an image are fixed by its digest. It is updated."""
        refs: dict[str, list[str]] = {}
        for recipe, tag, digest in self.refs():
            refs.setdefault(digest, []).append(f"{recipe}:{tag}")
        out = []
        digests = self.digests()
        if known is not None:
            for gone in set(known) - set(digests):
                del known[gone]
        for digest in digests:
            if known is not None and digest in known:
                out.append(dataclasses.replace(known[digest], refs=refs.get(digest, [])))
                continue
            m = self.manifest(digest)
            out.append(
                ImageSummary(
                    digest=digest,
                    recipe=m["recipe"]["name"],
                    refs=refs.get(digest, []),
                    size=sum(int(layer["size"]) for layer in m["layers"]),
                    packages=len(m["packages"]),
                    files=len(m["files"]),
                    created=int(m["created"]),
                )
            )
            if known is not None:
                known[digest] = out[-1]
        return out

    # -- maintenance -------------------------------------------------------
    def remove(self, ref: str) -> tuple[str, list[str]]:
        """Remove an image, its refs, and blobs no other image uses. Returns (digest, removed blobs)."""
        digest = self.resolve(ref)
        for recipe, tag, d in list(self.refs()):
            if d == digest:
                (self.root / "refs" / recipe / tag).unlink()
        self.manifest_path(digest).unlink()
        self._summary_path(digest).unlink(missing_ok=True)
        (self.root / "lxd" / _hex(digest)).unlink(missing_ok=True)
        used = {layer["digest"] for other in self.digests() for layer in self.manifest(other)["layers"]}
        removed = []
        blob_dir = self.root / "blobs" / "sha256"
        for blob in sorted(blob_dir.iterdir()) if blob_dir.is_dir() else []:
            d = "sha256:" + blob.name
            if HEX64.fullmatch(blob.name) and d not in used:
                blob.unlink()
                self.layer_index_path(d).unlink(missing_ok=True)
                removed.append(d)
        self.drop_packed()
        # the layer cache forgets what is gone (its next build starts from the lock again)
        gone = set(removed) | {digest}
        cache_dir = self.root / "cache"
        for entry in sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []:
            with contextlib.suppress(OSError):
                if entry.read_text().strip() in gone:
                    entry.unlink()
        return digest, removed

    def packed(self) -> list[tuple[Path, int]]:
        """The compressed copies of blobs kept for shipping (sandbox/store/packed.py), and sizes."""
        out = []
        for p in sorted(self.root.glob("packed/*/*")):
            raw, _, own = p.name.partition("-")
            with contextlib.suppress(FileNotFoundError):
                if HEX64.fullmatch(raw) and HEX64.fullmatch(own):
                    out.append((p, p.lstat().st_size))
        return out

    def drop_packed(self) -> list[Path]:
        """Remove the compressed copies whose blob is gone (they go with it)."""
        gone = [p for p, _ in self.packed() if not self.blob_path("sha256:" + p.name[:64]).is_file()]
        for p in gone:
            p.unlink(missing_ok=True)
        return gone

    def clean(self) -> list[Path]:
        """Remove temp files left by dead processes (an interrupted build)."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for p in self.root.rglob(".tmp-*"):
            m = re.match(r"\.tmp-(\d+)-", p.name)
            if m and pid_alive(int(m.group(1))):
                continue
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
        return removed


def _summarize(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k not in ("files", "packages")}


def _hex(digest: str) -> str:
    h = digest.removeprefix("sha256:")
    if not HEX64.fullmatch(h):
        raise StoreError(f"malformed digest {digest!r}")
    return h
