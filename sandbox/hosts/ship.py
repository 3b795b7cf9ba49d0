"""Shipping an image by digest to production hosts: only the blobs a host lacks, compressed in flight.

Per host: `have` (what of the image it holds), then one `recv-image DIGEST` request that carries
every missing blob and then the manifest as frames (sandbox/hosts/blobstream.py), which the host
takes only when all its blobs are there. The host verifies every blob's sha256 before it renames it
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.errors import SandboxError, StoreError
from sandbox.events import Event, EventSink
from sandbox.fsutil import pid_alive, remove_tree
from sandbox.hosts.agentcall import AgentPrefix, agent_call
from sandbox.hosts.blobstream import PACKED, Part, Progress, local_zstd, pack, send_image, size_unit
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
    does not. Hosts that already hold it cost one `have` round trip. `compression`: zstd (gzip for a
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
    plans: dict[str, tuple[list[str], str]] = {}  # host → (missing blobs, codec)

    def each(fn: Callable[[Transport], None]) -> None:
        live = [t for t in targets if t.name not in report.failed]
        if parallel and len(live) > 1:
            with ThreadPoolExecutor(max_workers=len(live), thread_name_prefix="ship") as pool:
                list(pool.map(fn, live))
        else:
            for t in live:
                fn(t)

    def guarded(t: Transport, result: HostShipResult, work: Callable[[], None]) -> None:
        t0 = time.monotonic()
        try:
            work()
        except Exception as e:
            why = e.message if isinstance(e, SandboxError) else f"{type(e).__name__}: {e}"
            with lock:
                report.failed[t.name] = why if why.startswith(f"{t.name}: ") else f"{t.name}: {why}"
        finally:
            result.seconds += time.monotonic() - t0
            with lock:
                report.hosts[t.name] = result

    def plan(t: Transport) -> None:
        result = HostShipResult(t.name)
        guarded(
            t,
            result,
            lambda: plans.__setitem__(t.name, _plan_host(t, agent, digest, layers, result, compression)),
        )

    each(plan)  # 1. what each host lacks, and whether it takes zstd
    with contextlib.ExitStack() as cleanup:
        # 2. each blob a host lacks, compressed once for all the hosts of its codec and all later
        # ships (a copy kept in the store), linked into this ship's temp dir
        packed: dict[tuple[str, str], Path] = {}
        for codec in PACKED:
            need = {d for missing, c in plans.values() if c == codec for d in missing}
            if need:
                if not packed:
                    _remove_dead_packs(store.root)
                    prefix = f".ship-{os.getpid()}-"
                    tmp = Path(
                        cleanup.enter_context(tempfile.TemporaryDirectory(prefix=prefix, dir=store.root))
                    )
                done = pack(store, codec, sorted(need), tmp, emit)
                packed.update(((codec, d), p) for d, p in done.items())
        gzipped = zlib.compress(manifest, 6, wbits=31)  # the manifest's form for a host with no base

        def send(t: Transport) -> None:  # 3. each host its missing blobs, then the manifest
            if t.name not in plans:
                return
            missing, _ = plans[t.name]
            result = report.hosts[t.name]
            guarded(
                t,
                result,
                lambda: _ship_host(t, store, agent, digest, gzipped, layers, missing, packed, result, emit),
            )

        each(send)
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


def _remove_dead_packs(root: Path) -> None:
    """Compressed blobs of a ship whose process died (`.ship-PID-*` in the store's root)."""
    for p in root.glob(".ship-*-*"):
        pid = p.name.split("-")[1]
        if pid.isdigit() and not pid_alive(int(pid)) and p.is_dir() and not p.is_symlink():
            remove_tree(p)


def _plan_host(
    t: Transport,
    agent: AgentPrefix,
    digest: str,
    layers: dict[str, tuple[Path, int]],
    result: HostShipResult,
    compression: str = "zstd",
) -> tuple[list[str], str]:
    """The blobs host `t` lacks and the codec it takes; ([], "") when it holds the whole image."""
    have = agent_call(t, agent, "have", input=_json({"blobs": list(layers), "manifests": [digest]}))
    present = set(have.get("blobs", [])) if isinstance(have, dict) else set()
    recent = have.get("recent", []) if isinstance(have, dict) else []
    result.bases = [d for d in recent if isinstance(d, str)]
    if digest in (have.get("manifests", []) if isinstance(have, dict) else []) and present >= set(layers):
        return [], ""
    missing = [d for d in layers if d not in present]
    host_zstd = have.get("zstd") if isinstance(have, dict) and "zstd" in have else None
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
    return missing, result.codec


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
    store: ImageStore,
    agent: AgentPrefix,
    digest: str,
    gzipped: bytes,
    layers: dict[str, tuple[Path, int]],
    missing: list[str],
    packed: dict[tuple[str, str], Path],
    result: HostShipResult,
    emit: EventSink,
) -> None:
    if not missing and not result.codec:
        return  # it holds the image
    form = _manifest_form(store, digest, gzipped, result)
    progress = Progress(t.name, len(missing), sum(layers[d][1] for d in missing), emit)
    todo = list(missing)
    for attempt in (1, 2):
        parts = [
            Part(d, layers[d][1], result.codec, packed.get((result.codec, d), layers[d][0])) for d in todo
        ]
        try:
            result.bytes_wire += send_image(t, agent, digest, parts, form, progress)
            break
        except SandboxError as e:
            why = e.message.removeprefix(f"host {t.name}: ").removeprefix(f"{t.name}: ")
            if attempt == 2:
                raise HostError(f"{t.name}: {why} (sent twice)", hint=e.hint, host=t.name) from e
            try:  # what got through is verified and stays: send the rest once more
                present = set(
                    agent_call(t, agent, "have", input=_json({"blobs": todo, "manifests": []}))["blobs"]
                )
            except (SandboxError, TypeError, KeyError) as again:
                raise HostError(f"{t.name}: {why}", hint=e.hint, host=t.name) from again
            todo = [d for d in todo if d not in present]
            result.resent += len(todo)
            progress.done, progress.raw = (
                len(missing) - len(todo),
                sum(layers[d][1] for d in missing if d in present),
            )
            emit(Event("warning", phase="ship", message=f"{t.name}: {why[:300]}; sending again"))
    result.blobs_sent = len(missing)
    result.bytes_raw = sum(layers[d][1] for d in missing)
    result.manifest_sent = True
    progress.emit(final=True)


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
