"""Shipping images by digest: the control side (sandbox/hosts/ship.py) against the real host agent
(`python -m sandbox.hostagent`) through LocalTransport, each host's store under the test's tmp dir."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import pytest

from sandbox.events import Recorder
from sandbox.hosts import ship as ship_mod
from sandbox.hosts.ship import ShipError, ship
from sandbox.hosts.transport import Answers, Completed, LocalTransport, Talk, Transport
from sandbox.store import ImageStore
from tests.unit.imagefactory import Image, make_image

REPO = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "sandbox.hostagent"]


@pytest.fixture(autouse=True)
def _agent_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("SANDBOX_HOST_ROOT", str(tmp_path / "hosts" / "local"))


def per_host(tmp_path: Path, path: str | None = None) -> ship_mod.AgentPrefix:
    """The agent prefix with a store of its own per host name (and optionally another PATH)."""

    def prefix(t: Transport) -> Sequence[str]:
        env = [f"SANDBOX_HOST_ROOT={tmp_path / 'hosts' / t.name}"] + ([f"PATH={path}"] if path else [])
        return ["env", *env, *AGENT]

    return prefix


def host_store(tmp_path: Path, name: str = "local") -> ImageStore:
    return ImageStore(tmp_path / "hosts" / name / "store")


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


@pytest.fixture
def image(store: ImageStore, tmp_path: Path) -> Image:
    return make_image(store, tmp_path / "work", app_files={"srv/app/main.py": b"print('v1')\n" * 5000})


@pytest.fixture(params=["zstd", "gzip"])
def codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The codec blobs travel in: zstd, or gzip (this machine without zstd)."""
    if request.param == "gzip":
        monkeypatch.setattr(ship_mod, "local_zstd", lambda: False)
    return str(request.param)


def assert_holds(host: ImageStore, local: ImageStore, digest: str) -> None:
    data = host.manifest_path(digest).read_bytes()
    assert data == local.manifest_path(digest).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    for layer in local.manifest(digest)["layers"]:
        blob = host.blob_path(layer["digest"]).read_bytes()
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
        assert len(blob) == layer["size"]


def leftovers(host: ImageStore) -> list[Path]:
    return sorted(host.root.rglob(".tmp-*")) if host.root.exists() else []


def first_blob_middle(stream: bytes | bytearray) -> int | None:
    """Where the middle of the first blob's body is in an image stream (None: not known yet)."""
    pos = 0
    while (end := stream.find(b"\n", pos)) >= 0:
        fields = stream[pos:end].split()
        if fields[:1] == [b"blob"]:
            return end + 1 + int(fields[-1]) // 2
        if fields[:1] != [b"have"]:
            return None
        pos = end + 1 + int(fields[1])
    return None


def relayed(talk: Talk, seen: bytearray, flip: bool) -> Talk:
    """`talk` with what it writes passing through here: kept in `seen`, and with the byte in the
    middle of the first blob flipped when `flip`."""

    def wrapped(stdin: IO[bytes], answers: Answers) -> None:
        r, w = os.pipe()

        def pass_on() -> None:
            target, taking = None, True
            with os.fdopen(r, "rb") as src:
                while chunk := bytearray(src.read1(1 << 16)):
                    start = len(seen)
                    seen.extend(chunk)
                    target = target if target is not None else first_blob_middle(seen) if flip else None
                    if target is not None and start <= target < len(seen):
                        chunk[target - start] ^= 0xFF
                    try:
                        if taking:
                            stdin.write(chunk)
                            stdin.flush()
                    except OSError:  # the host stopped reading: read the rest through
                        taking = False

        relay = threading.Thread(target=pass_on)
        relay.start()
        try:
            with os.fdopen(w, "wb", buffering=0) as f:
                talk(f, answers)
        finally:
            relay.join()

    return wrapped


class Corrupting(LocalTransport):
    """Flips a byte in the middle of the first blob of the first `times` image streams it carries."""

    def __init__(self, name: str, times: int) -> None:
        super().__init__(name)
        self.left = times

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        stdin: IO[bytes] | None = None,
        timeout: float | None = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        if "recv-image" in argv and stdin is not None and self.left > 0:
            self.left -= 1
            data = bytearray(stdin.read())
            data[first_blob_middle(data) or 0] ^= 0xFF
            return super().run(argv, input=bytes(data), timeout=timeout)
        return super().run(argv, input=input, stdin=stdin, timeout=timeout)

    def talk(self, argv: Sequence[str], talk: Talk, *, timeout: float | None = 60) -> Completed:
        flip = "recv-image" in argv and self.left > 0
        self.left -= flip
        return super().talk(argv, relayed(talk, bytearray(), flip), timeout=timeout)


def test_ship_then_nothing_then_only_the_changed_layer(
    store: ImageStore, image: Image, tmp_path: Path, codec: str
) -> None:
    rec = Recorder()
    report = ship(store, image.digest, [LocalTransport()], AGENT, rec)
    r = report.hosts["local"]
    assert (r.blobs_sent, r.codec, r.resent, report.failed) == (2, codec, 0, {})
    assert r.bytes_raw == sum(layer["size"] for layer in image.manifest["layers"])
    assert 0 < r.bytes_wire < r.bytes_raw  # tar of repeated text compresses
    assert_holds(host_store(tmp_path), store, image.digest)
    assert any(e.kind == "progress" and e.message.startswith("local: 2/2 blobs") for e in rec.events)

    again = ship(store, image.digest, [LocalTransport()], AGENT, rec).hosts["local"]
    assert (again.blobs_sent, again.bytes_wire, again.manifest_sent) == (0, 0, False)

    v2 = make_image(store, tmp_path / "work", app_files={"srv/app/main.py": b"print('v2')\n"})
    assert v2.base == image.base and v2.app != image.app
    r2 = ship(store, v2.digest, [LocalTransport()], AGENT, rec).hosts["local"]
    assert (r2.blobs_sent, r2.bytes_raw) == (1, v2.manifest["layers"][1]["size"])
    assert_holds(host_store(tmp_path), store, v2.digest)
    assert leftovers(host_store(tmp_path)) == []


def test_host_without_zstd_gets_gzip(store: ImageStore, image: Image, tmp_path: Path) -> None:
    report = ship(store, image.digest, [LocalTransport("h1")], per_host(tmp_path, "/nonexistent"), Recorder())
    assert report.hosts["h1"].codec == "gzip"
    assert_holds(host_store(tmp_path, "h1"), store, image.digest)


def test_a_corrupt_blob_is_sent_again(store: ImageStore, image: Image, tmp_path: Path, codec: str) -> None:
    rec = Recorder()
    r = ship(store, image.digest, [Corrupting("local", times=1)], AGENT, rec).hosts["local"]
    assert (r.blobs_sent, r.resent, r.codec) == (2, 1, codec)
    assert_holds(host_store(tmp_path), store, image.digest)
    assert any(e.kind == "warning" and "sending again" in e.message for e in rec.events)
    assert leftovers(host_store(tmp_path)) == []


def test_always_corrupt_fails_that_host_and_keeps_nothing_of_it(
    store: ImageStore, image: Image, tmp_path: Path
) -> None:
    good, bad = LocalTransport("web1"), Corrupting("web2", times=99)
    with pytest.raises(ShipError) as e:
        ship(store, image.digest, [good, bad], per_host(tmp_path), Recorder())
    assert "web2" in e.value.message and "web1" not in e.value.message
    assert image.base in e.value.message and "arrived corrupt" in e.value.message
    assert set(e.value.report.failed) == {"web2"}
    assert_holds(host_store(tmp_path, "web1"), store, image.digest)  # the good host keeps the image
    h2 = host_store(tmp_path, "web2")
    assert leftovers(h2) == []
    # the blob after the corrupt one came through verified and stays; the corrupt one never lands
    assert [p.name for p in (h2.root / "blobs" / "sha256").iterdir()] == [image.app[7:]]
    assert not h2.manifest_path(image.digest).exists()


def test_a_host_that_stops_reading_does_not_hang_the_sender(store: ImageStore, tmp_path: Path) -> None:
    """A blob far larger than a pipe's buffer, to a "host" that exits without reading it (after it
    said it has nothing): the pump gets EPIPE, the blob is tried twice, the host fails with its name."""
    digest, size, _ = store.put_blob(lambda f: f.write(os.urandom(4 << 20)))
    image = store.put_manifest({"layers": [{"kind": "base", "digest": digest, "size": size}], "created": 0})
    mute = (  # recv-image: the first line (a have frame's header) and its body, an answer, exit
        'for a; do [ "$a" = recv-image ] && { read -r kind n; head -c "$n" >/dev/null 2>&1;'
        ' echo \'{"have": {"blobs": [], "manifests": [], "zstd": true}}\'; exit 1; }; done; exec "$@"'
    )
    t0 = time.monotonic()
    with pytest.raises(ShipError) as e:
        ship(store, image, [LocalTransport("mute")], ["sh", "-c", mute, "sh", *AGENT], Recorder())
    assert time.monotonic() - t0 < 30
    assert "mute: agent recv-image failed (exit 1)" in e.value.message
    assert "(sent twice)" in e.value.message
    assert e.value.report.hosts["mute"].resent == 1


def test_a_host_that_does_not_answer_what_it_has_is_sent_nothing(store: ImageStore, image: Image) -> None:
    """recv-image that exits at once (no answer to the have frame): nothing is sent, no second try."""
    t = Argvs()
    quits = ["sh", "-c", 'for a; do [ "$a" = recv-image ] && exit 1; done; exec "$@"', "sh", *AGENT]
    with pytest.raises(ShipError) as e:
        ship(store, image.digest, [t], quits, Recorder())
    assert "local: agent recv-image failed (exit 1)" in e.value.message and "twice" not in e.value.message
    [(argv, stream)] = t.calls
    assert "recv-image" in argv and stream.startswith(b"have ") and b"blob " not in stream


class Argvs(LocalTransport):
    """Records every command and its stdin."""

    def __init__(self) -> None:
        super().__init__("local")
        self.calls: list[tuple[list[str], bytes]] = []

    def run(self, argv, *, input=None, stdin=None, timeout=60):  # type: ignore[no-untyped-def,override]
        data = input if input is not None else stdin.read() if stdin is not None else b""
        self.calls.append((list(argv), data))
        return super().run(argv, input=data, timeout=timeout)

    def talk(self, argv: Sequence[str], talk: Talk, *, timeout: float | None = 60) -> Completed:
        seen = bytearray()
        try:
            return super().talk(argv, relayed(talk, seen, False), timeout=timeout)
        finally:
            self.calls.append((list(argv), bytes(seen)))


def test_a_rebuilds_manifest_goes_as_a_patch_against_one_the_host_has(
    store: ImageStore, image: Image, tmp_path: Path
) -> None:
    ship(store, image.digest, [LocalTransport()], AGENT, Recorder())
    v2 = make_image(store, tmp_path / "work", app_files={"srv/app/main.py": b"print('v2')\n"})
    t = Argvs()
    ship(store, v2.digest, [t], AGENT, Recorder())
    [stream] = [stream for argv, stream in t.calls if "recv-image" in argv]
    sent = []  # the frames' headers
    while stream:
        head, _, stream = stream.partition(b"\n")
        sent.append(head.split())
        stream = stream[int(head.split()[-1]) :] if head != b"end" else stream
    assert [h[:2] for h in sent[1:]] == [[b"blob", v2.app.encode()], [b"manifest", b"zstd-patch"], [b"end"]]
    assert sent[0][0] == b"have"  # what the host has, asked in the same request
    assert sent[2][2] == image.digest.encode()
    assert int(sent[2][3]) < store.manifest_path(v2.digest).stat().st_size
    assert_holds(host_store(tmp_path), store, v2.digest)
