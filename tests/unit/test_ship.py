"""Shipping images by digest: the control side (sandbox/hosts/ship.py) against the real host agent
(`python -m sandbox.hostagent`) through LocalTransport, each host's store under the test's tmp dir."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import pytest

from sandbox.events import Recorder
from sandbox.hosts import ship as ship_mod
from sandbox.hosts.agentcall import AgentError, agent_call
from sandbox.hosts.ship import ShipError, ship
from sandbox.hosts.transport import LocalTransport, Transport
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
            header = data.index(b"\n") + 1
            data[header + int(data[:header].split()[-1]) // 2] ^= 0xFF
            return super().run(argv, input=bytes(data), timeout=timeout)
        return super().run(argv, input=input, stdin=stdin, timeout=timeout)


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


def frames(*blobs: tuple[str, int, str, bytes], manifest: bytes | None = None, end: bool = True) -> bytes:
    """An image stream: a frame per (digest, size, codec, wire bytes), the manifest (gzip), `end`."""
    out = b"".join(f"blob {d} {n} {codec} {len(w)}\n".encode() + w for d, n, codec, w in blobs)
    if manifest is not None:
        gz = gzip.compress(manifest)
        out += f"manifest gzip - {len(gz)}\n".encode() + gz
    return out + (b"end\n" if end else b"")


def recv(digest: str, stream: bytes) -> object:
    return agent_call(LocalTransport(), AGENT, "recv-image", [digest], input=stream)


IMAGE = "sha256:" + "0" * 64  # a manifest that never comes


@pytest.mark.parametrize(
    "digest",
    ["sha256:../../../etc/passwd", "sha256:" + "A" * 64, "sha256:" + "a" * 64 + "\n", "md5:" + "a" * 32, ""],
)
def test_recv_image_refuses_a_bad_digest(tmp_path: Path, digest: str) -> None:
    with pytest.raises(AgentError) as e:
        recv(IMAGE, frames((digest, 4, "none", b"abcd")))
    assert e.value.kind == "AgentUsage"
    assert (
        not (tmp_path / "hosts" / "local" / "store" / "blobs").exists()
        or leftovers(host_store(tmp_path)) == []
    )
    with pytest.raises(AgentError) as e:
        recv(digest, frames())
    assert e.value.kind == "AgentUsage"


@pytest.mark.parametrize(
    "header",
    [
        b"blob sha256:%s 4 none 99999999999999999\n" % (b"a" * 64),
        b"blob x\n",
        b"blob " + b"9" * 400 + b"\n",
        b"rm -rf\n",
    ],
)
def test_recv_image_refuses_a_malformed_header(tmp_path: Path, header: bytes) -> None:
    with pytest.raises(AgentError) as e:
        recv(IMAGE, header + b"abcd" + b"end\n")
    assert e.value.kind in ("AgentUsage", "StreamCut")
    assert leftovers(host_store(tmp_path)) == []


def test_recv_image_refuses_more_bytes_than_announced_and_goes_on_with_the_next_blob(tmp_path: Path) -> None:
    data, other = b"x" * 100_000, b"z" * 3000
    digest, d2 = ("sha256:" + hashlib.sha256(b).hexdigest() for b in (data, other))
    with pytest.raises(AgentError) as e:
        recv(IMAGE, frames((digest, 1000, "none", data), (d2, len(other), "none", other)))
    assert e.value.kind == "BlobCorrupt" and "more than" in e.value.message and digest in e.value.message
    host = host_store(tmp_path)
    assert leftovers(host) == [] and not host.blob_path(digest).exists()
    assert host.blob_path(d2).read_bytes() == other  # the frame after the bad one was found and taken
    assert recv(IMAGE, frames((digest, len(data), "none", data)))["stored"] == [digest]  # type: ignore[index]
    assert host.blob_path(digest).read_bytes() == data


@pytest.mark.parametrize("codec", ["zstd", "gzip", "none"])
def test_recv_image_refuses_a_corrupt_blob_and_keeps_the_stream(tmp_path: Path, codec: str) -> None:
    data, other = os.urandom(3000) * 20, b"w" * 5000
    digest, d2 = ("sha256:" + hashlib.sha256(b).hexdigest() for b in (data, other))
    wire = {"none": data, "gzip": gzip.compress(data)}.get(codec) or subprocess.run(
        ["zstd", "-3", "-c", "-q"], input=data, capture_output=True, check=True
    ).stdout
    bad = bytearray(wire)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(AgentError) as e:
        recv(IMAGE, frames((digest, len(data), codec, bytes(bad)), (d2, len(other), "none", other)))
    assert e.value.kind == "BlobCorrupt" and f"blob {digest} arrived corrupt" in e.value.message
    host = host_store(tmp_path)
    assert leftovers(host) == [] and not host.blob_path(digest).exists()
    assert host.blob_path(d2).read_bytes() == other


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_recv_image_refuses_a_cut_short_stream(tmp_path: Path, codec: str) -> None:
    data = b"y" * 50_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    zstd = subprocess.run(["zstd", "-3", "-c", "-q"], input=data, capture_output=True, check=True).stdout
    stream = frames((digest, len(data), codec, data if codec == "none" else zstd), end=False)
    with pytest.raises(AgentError) as e:  # cut inside the blob's frame: nothing of it is kept
        recv(IMAGE, stream[:-8])
    assert e.value.kind == "StreamCut" and f"blob {digest} arrived cut short" in e.value.message
    assert leftovers(host_store(tmp_path)) == [] and not host_store(tmp_path).blob_path(digest).exists()
    with pytest.raises(AgentError) as e:  # cut after it: the blob is whole and verified, the stream is not
        recv(IMAGE, stream)
    assert e.value.kind == "StreamCut" and "ended without `end`" in e.value.message
    assert host_store(tmp_path).blob_path(digest).read_bytes() == data


def test_recv_image_takes_the_manifest_only_after_its_blobs(
    store: ImageStore, image: Image, tmp_path: Path
) -> None:
    data = store.manifest_path(image.digest).read_bytes()
    with pytest.raises(AgentError) as e:
        recv(image.digest, frames(manifest=data))
    assert e.value.kind == "StoreError" and "blobs first" in (e.value.hint or "")
    assert not host_store(tmp_path).manifest_path(image.digest).exists()
    with pytest.raises(AgentError) as e:  # and bytes that are not the digest's
        recv(image.digest, frames(manifest=data + b" "))
    assert e.value.kind == "BlobCorrupt"


def test_have_answers_only_for_verified_objects(store: ImageStore, image: Image, tmp_path: Path) -> None:
    ask = {"blobs": [image.base, image.app], "manifests": [image.digest]}
    got = agent_call(LocalTransport(), AGENT, "have", input=ship_mod._json(ask))
    assert got == {"blobs": [], "manifests": [], "recent": [], "zstd": True}
    ship(store, image.digest, [LocalTransport()], AGENT, Recorder())
    got = agent_call(LocalTransport(), AGENT, "have", input=ship_mod._json(ask))
    assert got == {**ask, "recent": [image.digest], "zstd": True}
    with pytest.raises(AgentError):
        agent_call(LocalTransport(), AGENT, "have", input=ship_mod._json({"blobs": ["../x"]}))


def test_a_host_that_stops_reading_does_not_hang_the_sender(store: ImageStore, tmp_path: Path) -> None:
    """A blob far larger than a pipe's buffer, to a "host" that exits without reading: the pump gets
    EPIPE, the blob is tried twice, the host fails with its name."""
    digest, size, _ = store.put_blob(lambda f: f.write(os.urandom(4 << 20)))
    image = store.put_manifest({"layers": [{"kind": "base", "digest": digest, "size": size}], "created": 0})
    t0 = time.monotonic()
    with pytest.raises(ShipError) as e:
        ship(
            store,
            image,
            [LocalTransport("mute")],
            ["sh", "-c", 'for a; do [ "$a" = recv-image ] && exit 1; done; exec "$@"', "sh", *AGENT],
            Recorder(),
        )
    assert time.monotonic() - t0 < 30
    assert "mute: agent recv-image failed (exit 1)" in e.value.message
    assert "(sent twice)" in e.value.message
    assert e.value.report.hosts["mute"].resent == 1


def test_have_removes_temp_files_of_dead_agents(tmp_path: Path) -> None:
    blobs = host_store(tmp_path).root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / ".tmp-999999999-abc").write_bytes(b"half a blob")
    agent_call(LocalTransport(), AGENT, "have", input=b'{"blobs": [], "manifests": []}')
    assert leftovers(host_store(tmp_path)) == []


class Argvs(LocalTransport):
    """Records every command and its stdin."""

    def __init__(self) -> None:
        super().__init__("local")
        self.calls: list[tuple[list[str], bytes]] = []

    def run(self, argv, *, input=None, stdin=None, timeout=60):  # type: ignore[no-untyped-def,override]
        data = input if input is not None else stdin.read() if stdin is not None else b""
        self.calls.append((list(argv), data))
        return super().run(argv, input=data, timeout=timeout)


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
    assert [h[:2] for h in sent] == [[b"blob", v2.app.encode()], [b"manifest", b"zstd-patch"], [b"end"]]
    assert sent[1][2] == image.digest.encode()
    assert int(sent[1][3]) < store.manifest_path(v2.digest).stat().st_size
    assert_holds(host_store(tmp_path), store, v2.digest)
