"""The host side of shipping (sandbox/hostagent/imagerecv.py, storeops.py) against hostile streams:
`recv-image` frames (bad digests and headers, a have frame, blobs longer than announced, corrupt or
cut short, the manifest last) and `have`, through the real agent and LocalTransport."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from sandbox.events import Recorder
from sandbox.hosts import ship as ship_mod
from sandbox.hosts.agentcall import AgentError, agent_call
from sandbox.hosts.ship import ship
from sandbox.hosts.transport import LocalTransport
from sandbox.store import ImageStore
from tests.unit import test_ship
from tests.unit.imagefactory import Image
from tests.unit.test_ship import AGENT, host_store, leftovers

# the fixtures of test_ship: the agent's environment (autouse), the control store, an image in it
_agent_env, store, image = test_ship._agent_env, test_ship.store, test_ship.image


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


def have_frame(doc: object) -> bytes:
    data = json.dumps(doc).encode()
    return b"have %d\n" % len(data) + data


def test_recv_image_answers_a_have_frame_first_then_takes_the_frames(tmp_path: Path) -> None:
    data = b"z" * 3000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ask = have_frame({"blobs": [digest], "manifests": [IMAGE]})
    cp = LocalTransport().run([*AGENT, "recv-image", IMAGE], input=ask + frames((digest, 3000, "none", data)))
    first, last = cp.stdout.splitlines()
    assert json.loads(first) == {"have": {"blobs": [], "manifests": [], "recent": [], "zstd": True}}
    assert json.loads(last) == {"ok": {"stored": [digest], "manifest": False}}
    assert host_store(tmp_path).blob_path(digest).read_bytes() == data


@pytest.mark.parametrize(
    "stream",
    [
        frames(("sha256:" + hashlib.sha256(b"x").hexdigest(), 1, "none", b"x"), end=False)
        + have_frame({"blobs": []})
        + b"end\n",  # not the first frame
        have_frame({"blobs": []}) + have_frame({"blobs": []}) + b"end\n",  # twice
        b"have 5\n{nope" + b"end\n",
        have_frame({"blobs": ["../../etc/passwd"]}) + b"end\n",
        have_frame({"blobs": "sha256:" + "a" * 64}) + b"end\n",
        b"have 99999999999\n{}end\n",
        b"have -1\nend\n",
    ],
)
def test_recv_image_refuses_a_malformed_have_frame(tmp_path: Path, stream: bytes) -> None:
    with pytest.raises(AgentError) as e:
        recv(IMAGE, stream)
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


def test_have_removes_temp_files_of_dead_agents(tmp_path: Path) -> None:
    blobs = host_store(tmp_path).root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / ".tmp-999999999-abc").write_bytes(b"half a blob")
    agent_call(LocalTransport(), AGENT, "have", input=b'{"blobs": [], "manifests": []}')
    assert leftovers(host_store(tmp_path)) == []
