"""Shipping an image by digest to production hosts: only the blobs a host lacks, compressed in flight.

Per host, one `recv-image DIGEST` request (sandbox/hosts/blobstream.py): it opens with a `have`
frame (what of the image the host holds; the host answers at once), then carries every missing
blob and the manifest as frames, which the host takes only when all its blobs are there: one ssh
session and one agent start per host. The host verifies every blob's sha256 before it renames it
into its store (sandbox/hostagent/imagerecv.py), so a host that has the manifest has the verified
image. Blobs that fail (corrupt, cut short, connection lost) are sent once more, in a second request
with what the host still lacks; a second failure fails that host. Hosts are shipped to in parallel;
one failed host does not undo the others.

The codec is zstd -3 -T0 when both sides have the zstd CLI (fast, and multi-threaded so one stream
keeps up with a fast link), else gzip level 1 from zlib (the stdlib, present everywhere). Each blob
is compressed once, at the first ship that needs it, and the copy is kept in the store for every
later ship to any host (sandbox/store/packed.py): a registry keeps its layers compressed too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError, StoreError
from sandbox.events import Event, EventSink
from sandbox.fsutil import pid_alive, remove_tree
from sandbox.hosts.agentcall import AgentPrefix, agent_call
from sandbox.hosts.blobstream import (
    PACKED,
    Part,
    Progress,
    Sending,
    ask_and_send,
    local_zstd,
    pack,
    request_timeout,
    send_image,
    size_unit,
)
from sandbox.hosts.transport import HostError, Transport
from sandbox.store import ImageStore


@dataclass
class HostShipResult:
    host: str
    blobs_sent: int = 0
    bytes_raw: int = 0
    bytes_wire: int = 0
    seconds: float = 0.0
    codec: str = ""
    resent: int = 0  # blobs that failed once and were sent again
    manifest_sent: bool = False
    #: the manifests the host holds, newest first (a new one goes as a zstd patch against one)
    bases: list[str] = field(default_factory=list)
    host_zstd: bool = False


@dataclass
class ShipReport:
    digest: str
    hosts: dict[str, HostShipResult] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # host → why


class ShipError(HostError):
    """One or more hosts did not get the image (each is named); `report` has what the others got."""

    def __init__(self, message: str, hint: str | None, report: ShipReport) -> None:
        super().__init__(message, hint)
        self.report = report


def ship(
    store: ImageStore,
    digest: str,
    targets: Sequence[Transport],
    agent: AgentPrefix,
    sink: EventSink,
    parallel: bool = True,
    compression: str = "zstd",
) -> ShipReport:
    """Make every target hold image `digest` (verified); raise ShipError naming every host that
    does not. Hosts that already hold it cost one short request. `compression`: zstd (gzip for a
    host without zstd), gzip, or none (a fast link where the CPU, not the wire, is the limit)."""
    manifest = store.manifest_path(digest).read_bytes()
    if "sha256:" + hashlib.sha256(manifest).hexdigest() != digest:
        raise StoreError(f"image {digest} is corrupt in the local store", hint="rebuild it")
    layers: dict[str, tuple[Path, int]] = {}
    for layer in store.manifest(digest)["layers"]:
        path = store.blob_path(layer["digest"])
        if not path.is_file():
            raise StoreError(f"image {digest} lacks its blob {layer['digest']} here", hint="rebuild it")
        layers[layer["digest"]] = (path, path.stat().st_size)
    lock = threading.Lock()

    def emit(event: Event) -> None:  # sinks need not be thread-safe
        with lock:
            sink(event)

    report = ShipReport(digest)

    def guarded(t: Transport) -> None:
        result, t0 = HostShipResult(t.name), time.monotonic()
        try:
            _ship_host(t, agent, digest, layers, compression, copies, result, emit)
        except Exception as e:
            why = e.message if isinstance(e, SandboxError) else f"{type(e).__name__}: {e}"
            with lock:
                report.failed[t.name] = why if why.startswith(f"{t.name}: ") else f"{t.name}: {why}"
        finally:
            result.seconds += time.monotonic() - t0
            with lock:
                report.hosts[t.name] = result

    with contextlib.ExitStack() as cleanup:
        copies = _Copies(store, manifest, cleanup, emit)
        if parallel and len(targets) > 1:
            with ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="ship") as pool:
                list(pool.map(guarded, targets))
        else:
            for t in targets:
                guarded(t)
    for r in report.hosts.values():
        if r.host not in report.failed:
            emit(Event("result", phase="ship", message=_summary(r), data={"host": r.host, **_numbers(r)}))
    if report.failed:
        names = ", ".join(sorted(report.failed))
        raise ShipError(
            f"image {digest[:19]} did not reach {len(report.failed)} host(s) ({names}): "
            + "; ".join(report.failed[h] for h in sorted(report.failed)),
            hint="the hosts that got it keep it; ship again when fixed (only what a host lacks is sent)",
            report=report,
        )
    return report


class _Copies:
    """What this ship sends from the store, shared by its hosts: each blob's compressed copy,
    linked into the ship's temp dir by the first host that needs it (the others wait for it and
    take the same link), and the manifest's gzipped form."""

    def __init__(
        self, store: ImageStore, manifest: bytes, cleanup: contextlib.ExitStack, emit: EventSink
    ) -> None:
        self.store, self.cleanup, self.emit = store, cleanup, emit
        self.gzipped = zlib.compress(manifest, 6, wbits=31)  # the manifest's form for a host with no base
        self.lock = threading.Lock()
        self.links: dict[tuple[str, str], Path] = {}
        self.tmp: Path | None = None

    def packed(self, codec: str, blobs: list[str]) -> dict[str, Path]:
        with self.lock:
            need = [d for d in blobs if (codec, d) not in self.links]
            if need:
                if self.tmp is None:
                    _remove_dead_packs(self.store.root)
                    made = tempfile.TemporaryDirectory(prefix=f".ship-{os.getpid()}-", dir=self.store.root)
                    self.tmp = Path(self.cleanup.enter_context(made))
                done = pack(self.store, codec, need, self.tmp, self.emit)
                self.links.update(((codec, d), p) for d, p in done.items())
            return {d: self.links[(codec, d)] for d in blobs}


def _remove_dead_packs(root: Path) -> None:
    """Compressed blobs of a ship whose process died (`.ship-PID-*` in the store's root)."""
    for p in root.glob(".ship-*-*"):
        pid = p.name.split("-")[1]
        if pid.isdigit() and not pid_alive(int(pid)) and p.is_dir() and not p.is_symlink():
            remove_tree(p)


def _plan(
    t: Transport,
    agent: AgentPrefix,
    digest: str,
    layers: dict[str, tuple[Path, int]],
    have: dict[str, Any],
    result: HostShipResult,
    compression: str,
) -> list[str] | None:
    """From the host's `have` answer: the blobs it lacks, and the codec it takes (in `result`);
    None when it holds the whole image."""
    present = set(_strings(have.get("blobs")))
    result.bases = _strings(have.get("recent"))
    if digest in _strings(have.get("manifests")) and present >= set(layers):
        return None
    missing = [d for d in layers if d not in present]
    host_zstd = have.get("zstd")
    if host_zstd is None:  # an agent of before `have` told
        caps = agent_call(t, agent, "caps")
        host_zstd = isinstance(caps, dict) and caps.get("zstd") is True
    result.host_zstd = local_zstd() and host_zstd is True
    if not missing:  # only its manifest
        result.codec = "none"
    elif compression in ("none", "gzip"):
        result.codec = compression
    else:
        result.codec = "zstd" if result.host_zstd else "gzip"
    return missing


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _manifest_form(
    store: ImageStore, digest: str, gzipped: bytes, result: HostShipResult
) -> tuple[list[str], bytes]:
    """How the manifest travels: a zstd patch against the newest manifest the host and this store
    both hold (a rebuild's file list differs in a few lines), else gzipped."""
    base = next((b for b in result.bases if b != digest and store.manifest_path(b).is_file()), None)
    if base is not None and result.host_zstd:
        p = subprocess.run(
            [
                "zstd",
                "-19",
                "-q",
                "-c",
                f"--patch-from={store.manifest_path(base)}",
                str(store.manifest_path(digest)),
            ],
            capture_output=True,
            check=False,
        )
        if p.returncode == 0:
            return ["zstd-patch", base], p.stdout
    return ["gzip"], gzipped


def _ship_host(
    t: Transport,
    agent: AgentPrefix,
    digest: str,
    layers: dict[str, tuple[Path, int]],
    compression: str,
    copies: _Copies,
    result: HostShipResult,
    emit: EventSink,
) -> None:
    """One request: the host says what it has, and in the same request it is sent what it lacks.
    Blobs that did not get through are sent once more, in a second request."""
    planned: list[tuple[list[str], Sending]] = []

    def decide(have: dict[str, Any]) -> Sending | None:
        missing = _plan(t, agent, digest, layers, have, result, compression)
        if missing is None:
            return None  # it holds the image
        progress = Progress(t.name, len(missing), sum(layers[d][1] for d in missing), emit)
        form = _manifest_form(copies.store, digest, copies.gzipped, result)
        planned.append((missing, (_parts(layers, missing, result.codec, copies), form, progress)))
        return planned[0][1]

    ask = {"blobs": list(layers), "manifests": [digest]}
    timeout = request_timeout(sum(n for _, n in layers.values()))
    try:
        result.bytes_wire += ask_and_send(t, agent, digest, ask, decide, timeout)[1]
    except SandboxError as e:
        if not planned:
            raise  # no answer to what it has: nothing was sent
        _again(t, agent, digest, layers, planned[0], e, copies, result, emit)
    if planned:
        missing, (_, _, progress) = planned[0]
        result.blobs_sent = len(missing)
        result.bytes_raw = sum(layers[d][1] for d in missing)
        result.manifest_sent = True
        progress.emit(final=True)


def _parts(layers: dict[str, tuple[Path, int]], blobs: list[str], codec: str, copies: _Copies) -> list[Part]:
    packed = copies.packed(codec, blobs) if codec in PACKED else {}
    return [Part(d, layers[d][1], codec, packed.get(d, layers[d][0])) for d in blobs]


def _again(
    t: Transport,
    agent: AgentPrefix,
    digest: str,
    layers: dict[str, tuple[Path, int]],
    planned: tuple[list[str], Sending],
    error: SandboxError,
    copies: _Copies,
    result: HostShipResult,
    emit: EventSink,
) -> None:
    """What got through is verified and stays: the rest once more, in a request of its own."""
    missing, (_, form, progress) = planned
    why = error.message.removeprefix(f"host {t.name}: ").removeprefix(f"{t.name}: ")
    try:
        present = set(agent_call(t, agent, "have", input=_json({"blobs": missing, "manifests": []}))["blobs"])
    except (SandboxError, TypeError, KeyError) as again:
        raise HostError(f"{t.name}: {why}", hint=error.hint, host=t.name) from again
    todo = [d for d in missing if d not in present]
    result.resent += len(todo)
    progress.done, progress.raw = len(missing) - len(todo), sum(layers[d][1] for d in missing if d in present)
    emit(Event("warning", phase="ship", message=f"{t.name}: {why[:300]}; sending again"))
    try:
        result.bytes_wire += send_image(
            t, agent, digest, (_parts(layers, todo, result.codec, copies), form, progress)
        )
    except SandboxError as e:
        why = e.message.removeprefix(f"host {t.name}: ").removeprefix(f"{t.name}: ")
        raise HostError(f"{t.name}: {why} (sent twice)", hint=e.hint, host=t.name) from e


def _size(n: int) -> str:
    unit, div = size_unit(n)
    return f"{n / div:.1f} {unit}"


def _numbers(r: HostShipResult) -> dict[str, object]:
    return {
        "blobs_sent": r.blobs_sent,
        "bytes_raw": r.bytes_raw,
        "bytes_wire": r.bytes_wire,
        "seconds": round(r.seconds, 3),
        "codec": r.codec,
        "resent": r.resent,
    }


def _summary(r: HostShipResult) -> str:
    if not r.blobs_sent and not r.manifest_sent:
        return f"{r.host}: has the image already ({r.seconds:.1f}s)"
    return (
        f"{r.host}: {r.blobs_sent} blob(s), {_size(r.bytes_raw)} raw, {_size(r.bytes_wire)} on the wire"
        f" ({r.codec or 'no blobs'}), {r.seconds:.1f}s"
    )


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()
