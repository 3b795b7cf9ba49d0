"""The compressed copies a ship keeps in the store (sandbox/store/packed.py): made once and reused by
every later ship to any host, checked before every use (a corrupt one is made again, never sent),
made once when ships run at once, removed with their blob."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from sandbox.errors import StoreError
from sandbox.events import Recorder
from sandbox.hosts.ship import ship
from sandbox.hosts.transport import LocalTransport
from sandbox.store import ImageStore
from sandbox.store.packed import packed_copy
from tests.unit import test_ship
from tests.unit.imagefactory import Image, make_image
from tests.unit.test_ship import Argvs, assert_holds, host_store, per_host

# the fixtures of test_ship: the agent's environment (autouse), the control store, an image in it,
# the codec (zstd, gzip)
_agent_env, store, image, codec = test_ship._agent_env, test_ship.store, test_ship.image, test_ship.codec


def kept(store: ImageStore, codec: str = "zstd") -> dict[str, Path]:
    """The kept copies of `codec` by the raw digest they are a copy of."""
    return {"sha256:" + p.name[:64]: p for p, _ in store.packed() if p.parent.name == codec}


def made(rec: Recorder) -> list[str]:
    """'zstd: 2 made' per codec a ship packed blobs in."""
    return [e.message.split(",")[0] for e in rec.events if e.kind == "log" and " made, " in e.message]


def sent_blobs(t: Argvs) -> dict[str, bytes]:
    """The blob frames' bodies of the recv-image streams `t` carried, by digest."""
    out = {}
    for argv, stream in t.calls:
        while "recv-image" in argv and stream:
            head, _, stream = stream.partition(b"\n")
            fields = head.split()
            if fields[0] == b"end":
                break
            n = int(fields[-1])
            if fields[0] == b"blob":
                out[fields[1].decode()] = stream[:n]
            stream = stream[n:]
    return out


def test_a_blob_is_compressed_once_for_every_later_ship(
    store: ImageStore, image: Image, tmp_path: Path, codec: str
) -> None:
    rec = Recorder()
    ship(store, image.digest, [LocalTransport("web1")], per_host(tmp_path), rec)
    copies = kept(store, codec)
    assert set(copies) == {image.base, image.app} and made(rec) == [f"{codec}: 2 made"]
    for raw, p in copies.items():  # named RAW-OWN: the copy's own sha256 is in its name
        assert p.name == f"{raw[7:]}-{hashlib.sha256(p.read_bytes()).hexdigest()}"
    stamps = {p: p.stat().st_mtime_ns for p in copies.values()}

    rec, t = Recorder(), Argvs()
    t.name = "web2"
    ship(store, image.digest, [t], per_host(tmp_path), rec)  # a new host: nothing compressed again
    assert made(rec) == [f"{codec}: 0 made"]
    assert {p: p.stat().st_mtime_ns for p in kept(store, codec).values()} == stamps
    assert sent_blobs(t) == {raw: p.read_bytes() for raw, p in copies.items()}
    assert_holds(host_store(tmp_path, "web2"), store, image.digest)
    assert not list(store.root.glob(".ship-*")) and not list(store.root.rglob(".tmp-*"))


@pytest.mark.parametrize("damage", ["flipped", "cut short", "a symlink", "another file's name"])
def test_a_corrupt_kept_copy_is_made_again_and_never_sent(
    store: ImageStore, image: Image, tmp_path: Path, damage: str
) -> None:
    ship(store, image.digest, [LocalTransport("web1")], per_host(tmp_path), Recorder())
    bad = kept(store)[image.base]
    good = bad.read_bytes()
    if damage == "flipped":
        data = bytearray(good)
        data[len(data) // 2] ^= 0xFF
        bad.write_bytes(bytes(data))
    elif damage == "cut short":
        bad.write_bytes(good[:-10])
    elif damage == "a symlink":
        bad.unlink()
        (tmp_path / "elsewhere").write_bytes(good)
        bad.symlink_to(tmp_path / "elsewhere")
    else:  # the bytes of the app's copy under the base's name
        bad.write_bytes(kept(store)[image.app].read_bytes())
    rec, t = Recorder(), Argvs()
    t.name = "web2"
    ship(store, image.digest, [t], per_host(tmp_path), rec)
    assert [e.message for e in rec.events if e.kind == "warning"] == [
        f"the kept zstd copy of {image.base} was corrupt: made again"
    ]
    assert made(rec) == ["zstd: 1 made"]
    assert sent_blobs(t)[image.base] == good  # the copy made again, not the corrupt one
    assert kept(store)[image.base].read_bytes() == good and not kept(store)[image.base].is_symlink()
    assert len(store.packed()) == 2
    assert_holds(host_store(tmp_path, "web2"), store, image.digest)


def test_a_corrupt_blob_in_the_local_store_gets_no_copy(
    store: ImageStore, image: Image, tmp_path: Path
) -> None:
    blob = store.blob_path(image.app)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(StoreError) as e:
        packed_copy(store, "zstd", image.app, into)
    assert f"blob {image.app} is corrupt in the local store" in e.value.message
    assert store.packed() == [] and not list(store.root.rglob(".tmp-*")) and not list(into.iterdir())


def test_ships_at_once_make_each_copy_once(store: ImageStore, image: Image, tmp_path: Path) -> None:
    recs = [Recorder() for _ in range(4)]
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            ship(store, image.digest, [LocalTransport(f"web{i}")], per_host(tmp_path), recs[i])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert errors == []
    assert sum(int(m.split()[1]) for r in recs for m in made(r)) == 2  # each copy made by one of them
    assert set(kept(store)) == {image.base, image.app} and len(store.packed()) == 2
    for i in range(4):
        assert_holds(host_store(tmp_path, f"web{i}"), store, image.digest)
    assert not list(store.root.glob(".ship-*")) and not list(store.root.rglob(".tmp-*"))


def test_copies_go_with_their_blob(store: ImageStore, image: Image, tmp_path: Path) -> None:
    v2 = make_image(store, tmp_path / "work", app_files={"srv/app/main.py": b"print('v2')\n"})
    for digest in (image.digest, v2.digest):
        ship(store, digest, [LocalTransport("web1")], per_host(tmp_path), Recorder())
    assert set(kept(store)) == {image.base, image.app, v2.app}
    dead = store.packed_dir("zstd") / ".tmp-999999999-x"  # a maker that died
    dead.write_bytes(b"half a copy")
    assert store.clean() == [dead]

    _, removed = store.remove(image.digest)
    assert removed == [image.app]
    assert set(kept(store)) == {image.base, v2.app}  # the base's copy stays: v2 uses it
    orphan = store.packed_dir("gzip") / f"{'e' * 64}-{'f' * 64}"  # a copy whose blob is gone
    orphan.write_bytes(b"x")
    store.remove(v2.digest)
    assert store.packed() == [] and (store.packed_dir("zstd") / ".lock").exists()
    assert os.listdir(store.root / "blobs" / "sha256") == []
