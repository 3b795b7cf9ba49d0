"""ImageStore (blobs, manifests, refs, remove, clean) and verify_image on synthetic images."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from imagefactory import make_image

from sandbox.errors import NotFound, StoreError
from sandbox.store import store as store_mod
from sandbox.store.store import ImageStore, canonical_json
from sandbox.store.verify import verify_image


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def dead_pid() -> int:
    """A pid no process can have: pids are always below pid_max."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except OSError:
        return 4_194_304


def fake_manifest(store: ImageStore, hexdigest: str) -> str:
    """A manifest file under a chosen name (resolve() only looks at names)."""
    path = store.root / "manifests" / f"{hexdigest}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")
    return "sha256:" + hexdigest


def blob_names(store: ImageStore) -> list[str]:
    d = store.root / "blobs" / "sha256"
    return sorted(os.listdir(d)) if d.is_dir() else []


# -- blobs ----------------------------------------------------------------


def test_put_blob_digest_is_sha256_of_bytes(store: ImageStore) -> None:
    data = b"layer bytes\x00\xff" * 1000

    def write(f):  # type: ignore[no-untyped-def]
        f.write(data[:5000])
        f.write(data[5000:])
        return "writer-result"

    digest, size, result = store.put_blob(write)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert size == len(data)
    assert result == "writer-result"
    path = store.blob_path(digest)
    assert path == store.root / "blobs" / "sha256" / digest[7:]
    assert path.read_bytes() == data
    assert blob_names(store) == [digest[7:]]  # no temp file left beside it


def test_put_blob_same_bytes_twice_is_one_blob(store: ImageStore) -> None:
    d1, _, _ = store.put_blob(lambda f: f.write(b"same"))
    d2, _, _ = store.put_blob(lambda f: f.write(b"same"))
    assert d1 == d2
    assert blob_names(store) == [d1[7:]]


def test_a_large_blob_goes_to_disk_while_it_is_written(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fdatasync in a thread every WRITEBACK_STEP bytes (one at a time), each done before the file
    is closed, also when the writer fails."""
    monkeypatch.setattr(store_mod, "WRITEBACK_STEP", 1000)
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(os.fstat(fd).st_ino))
    data = os.urandom(1000) * 10
    digest, size, _ = store.put_blob(lambda f: [f.write(data[i : i + 500]) for i in range(0, len(data), 500)])
    assert (digest, size) == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    assert store.blob_path(digest).read_bytes() == data
    assert 1 <= len(synced) <= 10  # at most one a step, a step being done
    assert set(synced) == {store.blob_path(digest).stat().st_ino}  # the blob's file, before its rename

    def fails(f):  # type: ignore[no-untyped-def]
        f.write(data)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        store.put_blob(fails)
    assert blob_names(store) == [digest[7:]]


def test_put_blob_writer_exception_leaves_nothing(store: ImageStore) -> None:
    def write(f):  # type: ignore[no-untyped-def]
        f.write(b"half a layer")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        store.put_blob(write)
    assert blob_names(store) == []


def test_put_blob_keyboard_interrupt_leaves_nothing(store: ImageStore) -> None:
    def write(f):  # type: ignore[no-untyped-def]
        f.write(b"x" * 10000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put_blob(write)
    assert blob_names(store) == []


@pytest.mark.parametrize("bad", ["sha256:xyz", "sha256:" + "A" * 64, "md5:" + "0" * 32, "../" + "0" * 64])
def test_malformed_digest_is_rejected(store: ImageStore, bad: str) -> None:
    with pytest.raises(StoreError, match="malformed digest"):
        store.blob_path(bad)


def test_layer_index_roundtrip_and_missing(store: ImageStore) -> None:
    digest = "sha256:" + "ab" * 32
    with pytest.raises(StoreError, match="no index"):
        store.layer_index(digest)
    index = {"/etc": {"type": "dir", "mode": "0755", "uid": 0, "gid": 0}}
    store.put_layer_index(digest, index)
    assert store.layer_index(digest) == index


# -- manifests ------------------------------------------------------------


def test_put_manifest_is_canonical(store: ImageStore) -> None:
    m1 = {
        "schema": 1,
        "recipe": {"name": "web", "sources": ["a"]},
        "created": 5,
        "packages": {"b": "1", "a": "2"},
    }
    m2 = {
        "packages": {"a": "2", "b": "1"},
        "created": 5,
        "recipe": {"sources": ["a"], "name": "web"},
        "schema": 1,
    }
    d1 = store.put_manifest(m1)
    d2 = store.put_manifest(m2)
    assert d1 == d2
    data = store.manifest_path(d1).read_bytes()
    assert data == canonical_json(m1)
    assert d1 == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.manifest(d1) == m1
    assert store.digests() == [d1]


def test_put_manifest_differs_when_content_differs(store: ImageStore) -> None:
    assert store.put_manifest({"a": [1, 2]}) != store.put_manifest({"a": [2, 1]})


def test_manifest_of_unknown_digest_is_notfound(store: ImageStore) -> None:
    with pytest.raises(NotFound) as info:
        store.manifest("sha256:" + "0" * 64)
    assert info.value.hint and "sandbox images" in info.value.hint


# -- refs and resolve -----------------------------------------------------


def test_set_ref_writes_digest(store: ImageStore) -> None:
    digest = "sha256:" + "c" * 64
    store.set_ref("web", "v1.2_rc-3", digest)
    assert (store.root / "refs" / "web" / "v1.2_rc-3").read_text() == digest + "\n"
    assert list(store.refs()) == [("web", "v1.2_rc-3", digest)]


@pytest.mark.parametrize("tag", ["", "Latest", "-x", ".hidden", "a/b", "a b", "x" * 64, "../../etc", "t:1"])
def test_set_ref_rejects_bad_tags(store: ImageStore, tag: str) -> None:
    with pytest.raises(StoreError) as info:
        store.set_ref("web", tag, "sha256:" + "c" * 64)
    assert info.value.hint
    assert not (store.root / "refs").exists() or not any((store.root / "refs").rglob("*"))


def test_refs_skips_hidden_temp_files(store: ImageStore) -> None:
    store.set_ref("web", "latest", "sha256:" + "c" * 64)
    (store.root / "refs" / "web" / ".tmp-1-x").write_text("junk")
    assert [t for _, t, _ in store.refs()] == ["latest"]


def test_resolve_name_tag_digest_and_prefix(store: ImageStore) -> None:
    a = store.put_manifest({"n": "a"})
    b = store.put_manifest({"n": "b"})
    store.set_ref("web", "latest", a)
    store.set_ref("web", "v2", b)
    assert store.resolve("web") == a
    assert store.resolve("web:latest") == a
    assert store.resolve("web:v2") == b
    assert store.resolve(" web:v2\n") == b
    assert store.resolve(b) == b
    assert store.resolve(b[7:]) == b  # bare full hex
    assert store.resolve(b[: 7 + 8]) == b  # sha256: + prefix
    assert store.resolve(a[7:13]) == a  # 6-digit prefix


def test_resolve_ambiguous_prefix(store: ImageStore) -> None:
    fake_manifest(store, "abcdef01" + "0" * 56)
    fake_manifest(store, "abcdef02" + "0" * 56)
    with pytest.raises(NotFound, match="ambiguous") as info:
        store.resolve("abcdef")
    assert info.value.hint
    with pytest.raises(NotFound, match="ambiguous"):
        store.resolve("sha256:abcdef0")
    assert store.resolve("abcdef02") == "sha256:abcdef02" + "0" * 56


def test_resolve_unknown_recipe_has_build_hint(store: ImageStore) -> None:
    with pytest.raises(NotFound) as info:
        store.resolve("nosuch")
    assert "nosuch" in info.value.message
    assert info.value.hint == "build it with `sandbox build nosuch`"


def test_resolve_unknown_tag(store: ImageStore) -> None:
    store.set_ref("web", "latest", store.put_manifest({"n": 1}))
    with pytest.raises(NotFound) as info:
        store.resolve("web:v9")
    assert "web:v9" in info.value.message
    assert info.value.hint and "sandbox build web" in info.value.hint


def test_resolve_unknown_full_digest(store: ImageStore) -> None:
    store.put_manifest({"n": 1})
    with pytest.raises(NotFound) as info:
        store.resolve("sha256:" + "0" * 64)
    assert "not found" in info.value.message
    assert info.value.hint and "sandbox images" in info.value.hint


def test_resolve_hex_prefix_without_match_falls_back_to_recipe(store: ImageStore) -> None:
    digest = store.put_manifest({"n": 1})
    store.set_ref("cafe42", "latest", digest)  # a recipe whose name looks like hex
    assert store.resolve("cafe42") == digest


@pytest.mark.parametrize("ref", ["Web", "web:Tag", "a:b:c", "../etc", "web/../x", "", "web:-x"])
def test_resolve_malformed_ref(store: ImageStore, ref: str) -> None:
    with pytest.raises(NotFound) as info:
        store.resolve(ref)
    assert "not an image reference" in info.value.message
    assert info.value.hint and "RECIPE:TAG" in info.value.hint


def test_resolve_ref_to_missing_manifest(store: ImageStore) -> None:
    store.set_ref("web", "latest", "sha256:" + "d" * 64)
    with pytest.raises(NotFound, match="missing image") as info:
        store.resolve("web")
    assert info.value.hint and "sandbox build web" in info.value.hint


# -- cache ----------------------------------------------------------------


def test_cache_get_only_returns_existing_objects(store: ImageStore) -> None:
    assert store.cache_get("base", "k") is None
    digest, _, _ = store.put_blob(lambda f: f.write(b"base"))
    store.cache_put("base", "k", digest)
    assert store.cache_get("base", "k") == digest
    store.blob_path(digest).unlink()
    assert store.cache_get("base", "k") is None
    m = store.put_manifest({"m": 1})
    store.cache_put("image", "k2", m)
    assert store.cache_get("image", "k2") == m


# -- summaries, remove ----------------------------------------------------


def test_summaries(store: ImageStore, tmp_path: Path) -> None:
    img = make_image(store, tmp_path / "w", tags=("latest", "v1"))
    [s] = store.summaries()
    assert s.digest == img.digest
    assert s.recipe == "web"
    assert s.refs == ["web:latest", "web:v1"]
    assert s.size == store.blob_path(img.base).stat().st_size + store.blob_path(img.app).stat().st_size
    assert s.packages == 2
    assert s.files == len(img.manifest["files"])
    assert s.created == img.manifest["created"]


def test_remove_keeps_shared_blobs(store: ImageStore, tmp_path: Path) -> None:
    a = make_image(store, tmp_path / "w", "web", tags=("latest", "v1"))
    b = make_image(store, tmp_path / "w", "api", app_files={"srv/api/main.py": b"api\n"})
    assert a.base == b.base  # same base tree → same deterministic blob
    assert a.app != b.app

    digest, removed = store.remove("web:v1")
    assert digest == a.digest
    assert removed == [a.app]
    assert not store.manifest_path(a.digest).exists()
    assert [(r, t) for r, t, _ in store.refs()] == [("api", "latest")]
    assert not store.blob_path(a.app).exists()
    assert not store.layer_index_path(a.app).exists()
    assert store.blob_path(a.base).is_file()  # still used by api
    assert store.layer_index_path(a.base).is_file()
    assert store.blob_path(b.app).is_file()
    assert store.resolve("api") == b.digest
    with pytest.raises(NotFound):
        store.resolve("web")

    _, removed = store.remove("api")
    assert sorted(removed) == sorted([b.base, b.app])
    assert blob_names(store) == []
    assert store.digests() == []


def test_remove_frees_layers_and_forgets_their_cache_entries(store: ImageStore, tmp_path: Path) -> None:
    a = make_image(store, tmp_path / "w")
    store.cache_put("base", "key", a.base)
    store.cache_put("image", "key", a.digest)
    store.cache_put("other", "key", "sha256:" + "0" * 64)
    _, removed = store.remove("web")
    assert sorted(removed) == sorted([a.app, a.base])
    assert not store.blob_path(a.base).exists()
    assert store.cache_get("base", "key") is None and store.cache_get("image", "key") is None
    assert (store.root / "cache" / "other-key").is_file()  # entries of other images stay


def test_remove_unknown_ref_changes_nothing(store: ImageStore, tmp_path: Path) -> None:
    a = make_image(store, tmp_path / "w")
    with pytest.raises(NotFound):
        store.remove("nosuch")
    assert store.resolve("web") == a.digest
    assert len(blob_names(store)) == 2


# -- clean ----------------------------------------------------------------


def test_clean_removes_only_dead_process_temp_files(store: ImageStore) -> None:
    dead = dead_pid()
    mine = os.getpid()
    blobs = store.root / "blobs" / "sha256"
    manifests = store.root / "manifests"
    blobs.mkdir(parents=True)
    manifests.mkdir(parents=True)
    dead_blob = blobs / f".tmp-{dead}-abc"
    dead_manifest = manifests / f".tmp-{dead}-def"
    own = blobs / f".tmp-{mine}-xyz"
    real = blobs / ("e" * 64)
    for p in (dead_blob, dead_manifest, own, real):
        p.write_bytes(b"partial")

    removed = store.clean()

    assert sorted(removed) == sorted([dead_blob, dead_manifest])
    assert not dead_blob.exists() and not dead_manifest.exists()
    assert own.exists()
    assert real.exists()


def test_clean_on_missing_store(tmp_path: Path) -> None:
    assert ImageStore(tmp_path / "nothing").clean() == []


# -- verify ---------------------------------------------------------------


def test_verify_good_image(store: ImageStore, tmp_path: Path) -> None:
    img = make_image(store, tmp_path / "w")
    report = verify_image(store, "web")
    assert report.digest == img.digest
    assert report.problems == []
    assert report.ok
    assert report.checked_files == len(img.manifest["files"])


def test_verify_counts_bytes_of_every_layer(store: ImageStore, tmp_path: Path) -> None:
    img = make_image(store, tmp_path / "w")
    report = verify_image(store, "web")
    assert report.checked_bytes == sum(layer["size"] for layer in img.manifest["layers"])
    assert not any("corrupt" in p or "missing" in p for p in report.problems)


def test_verify_flipped_blob_byte(store: ImageStore, tmp_path: Path) -> None:
    img = make_image(store, tmp_path / "w")
    path = store.blob_path(img.app)
    data = bytearray(path.read_bytes())
    data[700] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_image(store, "web")
    assert not report.ok
    corrupt = [p for p in report.problems if "corrupt" in p]
    assert len(corrupt) == 1
    assert corrupt[0].startswith(f"app layer {img.app} is corrupt")


def test_verify_missing_blob(store: ImageStore, tmp_path: Path) -> None:
    img = make_image(store, tmp_path / "w")
    store.blob_path(img.base).unlink()
    report = verify_image(store, "web")
    assert f"base layer {img.base} is missing" in report.problems


def test_verify_edited_manifest(store: ImageStore, tmp_path: Path) -> None:
    img = make_image(store, tmp_path / "w")
    path = store.manifest_path(img.digest)
    doc = json.loads(path.read_bytes())
    doc["packages"]["libc6"] = "2.36-9+evil"
    path.write_bytes(json.dumps(doc).encode())
    report = verify_image(store, img.digest)
    assert not report.ok
    assert any(p.startswith("manifest digest is sha256:") and p.endswith(img.digest) for p in report.problems)


def test_verify_manifest_file_list_disagrees(store: ImageStore, tmp_path: Path) -> None:
    img = make_image(store, tmp_path / "w")
    path = store.manifest_path(img.digest)
    doc = json.loads(path.read_bytes())
    doc["files"]["/usr/bin/tool"]["mode"] = "4755"
    path.write_bytes(canonical_json(doc))
    report = verify_image(store, "web")
    assert "file /usr/bin/tool: manifest and layers disagree" in report.problems


def test_verify_stored_layer_index_disagrees(store: ImageStore, tmp_path: Path) -> None:
    img = make_image(store, tmp_path / "w")
    index = store.layer_index(img.app)
    index["/srv/app/main.py"]["sha256"] = "0" * 64
    store.put_layer_index(img.app, index)
    report = verify_image(store, "web")
    assert f"app layer {img.app}: stored file index differs from the tar" in report.problems


def test_verify_truncated_manifest_is_reported_not_raised(store: ImageStore, tmp_path: Path) -> None:
    img = make_image(store, tmp_path / "w")
    path = store.manifest_path(img.digest)
    path.write_bytes(path.read_bytes()[:100])
    report = verify_image(store, "web")
    assert not report.ok
    assert any("manifest" in p for p in report.problems)
