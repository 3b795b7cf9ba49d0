"""The host's image store ops: what it has (`have`, `caps`), and taking a manifest by digest.

The control side (sandbox/hosts/ship.py) asks `have`, then sends the missing blobs and the manifest
in one `recv-image` request (sandbox/hostagent/imagerecv.py). A blob is decompressed straight into
a temp file of the store and renamed into place only when its sha256 is the digest it was sent as,
so the store holds verified blobs only and "present" means "verified". A manifest is accepted only
when every blob it names is present: a manifest on a host means the image can be used there.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError, StoreError
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


def shipped(op: str, args: list[str], error: type[SandboxError]) -> tuple[ImageStore, str]:
    """The host's store and the one digest argument of `op`: an image shipped here already (`error`
    if it is not, before the engine is asked)."""
    if len(args) != 1:
        raise AgentUsage(f"{op} takes one digest")
    digest = digest_arg(args[0])
    images = store()
    if not images.manifest_path(digest).is_file():
        raise error(
            f"image {digest[7:19]} is not in this host's store", hint="it is shipped first: run `up` again"
        )
    return images, digest


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
    return have_answer(read_request())


def have_answer(request: Any) -> dict[str, Any]:
    """Which of the blobs and manifests `request` names are here (verified), the newest manifests,
    and whether zstd is: the `have` op, and the `have` frame that opens a `recv-image` stream."""
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


def _unpatch(digest: str, base: Path, patch: bytes) -> bytes:
    """The manifest from a zstd patch against `base`, at most MAX_MANIFEST bytes read (a small
    hostile patch can expand to gigabytes: zstd is stopped past the bound)."""
    with tempfile.TemporaryFile() as src, tempfile.TemporaryFile() as err:
        src.write(patch)
        src.seek(0)
        proc = subprocess.Popen(
            ["zstd", "-d", "-q", "-c", f"--patch-from={base}"], stdin=src, stdout=subprocess.PIPE, stderr=err
        )
        assert proc.stdout is not None
        out = proc.stdout.read(MAX_MANIFEST + 1)
        if len(out) > MAX_MANIFEST:
            proc.kill()
        proc.stdout.close()
        code = proc.wait()
        err.seek(0)
        why = err.read(200).decode(errors="replace")
    if len(out) > MAX_MANIFEST:
        raise BlobCorrupt(f"manifest {digest} arrived corrupt (zstd patch: longer than {MAX_MANIFEST} bytes)")
    if code != 0:
        raise BlobCorrupt(f"manifest {digest} arrived corrupt (zstd patch: {why})")
    return out


def take_manifest(digest: str, form: list[str], data: bytes) -> None:
    """Store manifest `digest` from its bytes as sent: `gzip` (it lists every file of the image,
    megabytes of JSON), or `zstd-patch BASE`, a patch against manifest BASE that this host holds (a
    rebuild's file list differs in a few lines: KB instead of MB). Its blobs must be here already."""
    if form not in (["gzip"],) and not (len(form) == 2 and form[0] == "zstd-patch"):
        raise AgentUsage(f"manifest form {' '.join(form)[:80]!r}", hint="gzip or zstd-patch BASE")
    if len(data) > MAX_MANIFEST:
        raise BlobCorrupt(f"manifest {digest} arrived corrupt (longer than {MAX_MANIFEST} bytes)")
    if form[0] == "zstd-patch":
        base = store().manifest_path(digest_arg(form[1]))
        if not base.is_file():
            raise StoreError(f"manifest {form[1]} (the patch's base) is not here", hint="send it whole")
        data = _unpatch(digest, base, data)
    else:
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
