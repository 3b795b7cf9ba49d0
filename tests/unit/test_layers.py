"""normalize.write_layer / clean_rootfs and store.layers (index_of_tar, merge_indexes)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sandbox.build.normalize import SOURCES_NOTE, clean_rootfs, write_layer
from sandbox.store.layers import Index, index_of_tar, merge_indexes

SDE = 1_700_000_000
UID, GID = os.getuid(), os.getgid()

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod / trusted xattrs)")


def layer(root: Path, sde: int = SDE, **kw: Any) -> tuple[bytes, Index]:
    buf = io.BytesIO()
    index = write_layer(root, buf, sde, **kw)
    return buf.getvalue(), index


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def raw_names(data: bytes) -> list[str]:
    """Member names as stored (tarfile strips the trailing '/' of directories when reading)."""
    return [m.name + ("/" if m.isdir() and m.name != "." else "") for m in members(data)]


def touch(path: Path, data: bytes = b"", mtime: int | None = None, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    touch(root / "etc/hostname.d/b.conf", b"b\n")
    touch(root / "etc/hostname.d/a.conf", b"a\n")
    touch(root / "usr/bin/tool", b"#!/bin/sh\n", mode=0o755)
    touch(root / "Zeta", b"upper case sorts first\n")
    touch(root / "var/lib/data.bin", bytes(range(256)) * 40, mode=0o600)
    (root / "bin").symlink_to("usr/bin")
    (root / "srv/empty").mkdir(parents=True)
    return root


# -- write_layer: determinism and normalization ---------------------------


def test_same_tree_gives_identical_bytes(tree: Path) -> None:
    d1, i1 = layer(tree)
    d2, i2 = layer(tree)
    assert d1 == d2
    assert i1 == i2


def test_copy_of_tree_elsewhere_gives_identical_bytes(tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    shutil.copystat(tree, copy)
    for dirpath, dirs, _files in os.walk(tree):
        for d in dirs:
            src = os.path.join(dirpath, d)
            shutil.copystat(src, copy / os.path.relpath(src, tree), follow_symlinks=False)
    assert layer(tree)[0] == layer(copy)[0]


def test_bytes_change_when_content_changes(tree: Path) -> None:
    before = layer(tree)[0]
    (tree / "usr/bin/tool").write_bytes(b"#!/bin/sh\nexit 1\n")
    assert layer(tree)[0] != before


def test_mtimes_clamped_to_sde_older_kept(tmp_path: Path) -> None:
    root = tmp_path / "t"
    touch(root / "new", b"n", mtime=SDE + 5000)
    touch(root / "old", b"o", mtime=SDE - 5000)
    touch(root / "exact", b"e", mtime=SDE)
    os.utime(root, (SDE + 99, SDE + 99))
    data, _ = layer(root)
    mtimes = {m.name: m.mtime for m in members(data)}
    assert mtimes["./new"] == SDE
    assert mtimes["./old"] == SDE - 5000
    assert mtimes["./exact"] == SDE
    assert mtimes["."] == SDE


def test_names_ordering_and_prefix(tree: Path) -> None:
    data, _ = layer(tree)
    names = raw_names(data)
    assert names[0] == "."  # the root ("./" as written)
    assert all(n.startswith("./") for n in names[1:])
    # every directory's entries are in byte order, and a directory precedes its content
    seen: set[str] = set()
    by_parent: dict[str, list[str]] = {}
    for n in names[1:]:
        path = n.rstrip("/")
        parent = path.rpartition("/")[0]
        assert parent == "." or parent in seen, f"{n} before its directory"
        seen.add(path)
        by_parent.setdefault(parent, []).append(path.rpartition("/")[2])
    for parent, children in by_parent.items():
        assert children == sorted(children, key=os.fsencode), parent
    assert by_parent["."] == ["Zeta", "bin", "etc", "srv", "usr", "var"]
    assert by_parent["./etc/hostname.d"] == ["a.conf", "b.conf"]
    assert len(names) == len(set(names))


def test_owners_numeric_and_names_empty(tree: Path) -> None:
    data, index = layer(tree)
    for m in members(data):
        assert (m.uid, m.gid) == (UID, GID), m.name
        assert m.uname == "" and m.gname == "", m.name
        assert "uname" not in m.pax_headers and "gname" not in m.pax_headers
        assert "atime" not in m.pax_headers and "ctime" not in m.pax_headers
    assert all((e["uid"], e["gid"]) == (UID, GID) for e in index.values())


def test_file_entries_in_index(tree: Path) -> None:
    _, index = layer(tree)
    content = bytes(range(256)) * 40
    assert index["/var/lib/data.bin"] == {
        "type": "file",
        "mode": "0600",
        "uid": UID,
        "gid": GID,
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    assert index["/usr/bin/tool"]["mode"] == "0755"
    assert index["/srv/empty"]["type"] == "dir"
    assert set(index) == {
        "/",
        "/Zeta",
        "/bin",
        "/etc",
        "/etc/hostname.d",
        "/etc/hostname.d/a.conf",
        "/etc/hostname.d/b.conf",
        "/srv",
        "/srv/empty",
        "/usr",
        "/usr/bin",
        "/usr/bin/tool",
        "/var",
        "/var/lib",
        "/var/lib/data.bin",
    }


def test_index_sha256_matches_tar_content(tree: Path) -> None:
    data, index = layer(tree)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                body = f.read()
                key = "/" + m.name.removeprefix("./")
                assert index[key]["sha256"] == hashlib.sha256(body).hexdigest()
                assert index[key]["size"] == len(body) == m.size


def test_symlink(tree: Path) -> None:
    (tree / "etc/abs").symlink_to("/run/somewhere")
    data, index = layer(tree)
    by_name = {m.name: m for m in members(data)}
    assert by_name["./bin"].issym() and by_name["./bin"].linkname == "usr/bin"
    assert by_name["./etc/abs"].linkname == "/run/somewhere"
    assert index["/bin"] == {"type": "symlink", "target": "usr/bin", "mode": "0777", "uid": UID, "gid": GID}
    assert index["/etc/abs"]["target"] == "/run/somewhere"


def test_hardlinks(tmp_path: Path) -> None:
    root = tmp_path / "t"
    first = touch(root / "a/first", b"shared content\n", mode=0o640)
    os.link(first, root / "b")
    (root / "c").mkdir()
    os.link(first, root / "c/third")
    data, index = layer(root)
    links = [m for m in members(data) if m.name in ("./a/first", "./b", "./c/third")]
    # the first name met in the tar carries the content, the others are LNKTYPE entries pointing at it
    primary, *others = links
    assert primary.isreg() and primary.size == len(b"shared content\n")
    key = "/" + primary.name.removeprefix("./")
    assert "hardlink" not in index[key]
    assert index[key]["sha256"] == hashlib.sha256(b"shared content\n").hexdigest()
    assert len(others) == 2
    for m in others:
        assert m.type == tarfile.LNKTYPE
        assert m.linkname == primary.name
        assert m.size == 0
        entry = index["/" + m.name.removeprefix("./")]
        assert entry["hardlink"] == key
        assert entry["type"] == "file"
        assert entry["sha256"] == index[key]["sha256"]
        assert entry["mode"] == "0640"
    assert data.count(b"shared content\n") == 1


def test_fifo_kept_socket_dropped(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    os.mkfifo(root / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "sock"))
        data, index = layer(root)
    finally:
        sock.close()
    assert index["/pipe"]["type"] == "fifo"
    assert "/sock" not in index
    names = [m.name for m in members(data)]
    assert "./pipe" in names and "./sock" not in names


def test_user_xattrs_become_sorted_pax_records(tmp_path: Path) -> None:
    root = tmp_path / "t"
    f = touch(root / "f", b"x")
    try:
        os.setxattr(f, "user.zz", b"2")
        os.setxattr(f, "user.aa", b"1")
    except OSError:
        pytest.skip("filesystem without user xattrs")
    data, _ = layer(root)
    m = {m.name: m for m in members(data)}["./f"]
    assert m.pax_headers["SCHILY.xattr.user.aa"] == "1"
    assert m.pax_headers["SCHILY.xattr.user.zz"] == "2"
    assert layer(root)[0] == data


# -- write_layer: overlay upper dirs (root only) --------------------------


@needs_root
def test_overlay_whiteout(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    (root / "etc").mkdir(parents=True)
    os.mknod(root / "etc/gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.mknod(root / "dev-null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    data, index = layer(root, overlay_upper=True)
    names = [m.name for m in members(data)]
    assert "./etc/.wh.gone" in names
    assert "./etc/gone" not in names
    assert index["/etc/gone"] == {"type": "whiteout"}
    # a real char device (not 0/0) stays a device
    assert index["/dev-null"]["type"] == "char" and index["/dev-null"]["dev"] == [1, 3]


@needs_root
def test_without_overlay_upper_a_whiteout_is_a_device(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    os.mknod(root / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    _, index = layer(root)
    assert index["/gone"]["type"] == "char"


@needs_root
def test_overlay_opaque_dir(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    touch(root / "etc/app/new.conf", b"x")
    try:
        os.setxattr(root / "etc/app", "trusted.overlay.opaque", b"y")
    except OSError:
        pytest.skip("filesystem without trusted xattrs")
    data, index = layer(root, overlay_upper=True)
    names = [m.name for m in members(data)]
    assert "./etc/app/.wh..wh..opq" in names
    assert index["/etc/app"]["opaque"] is True
    m = {m.name: m for m in members(data)}["./etc/app"]
    assert not any("overlay" in k for k in m.pax_headers)  # trusted.overlay.* never reaches the tar
    sub = {k: v for k, v in index_of_tar(io.BytesIO(data)).items() if k.startswith("/etc")}
    assert sub == {k: v for k, v in index.items() if k.startswith("/etc")}


# -- index_of_tar ---------------------------------------------------------


def test_index_of_tar_equals_write_layer_index(tree: Path) -> None:
    os.link(tree / "usr/bin/tool", tree / "etc/tool-link")
    os.mkfifo(tree / "srv/pipe")
    data, index = layer(tree)
    recomputed = index_of_tar(io.BytesIO(data))
    assert recomputed["/"] == index["/"]
    assert recomputed == index


@needs_root
def test_index_of_tar_whiteout(tmp_path: Path) -> None:
    root = tmp_path / "upper"
    (root / "etc").mkdir(parents=True)
    os.mknod(root / "etc/gone", stat.S_IFCHR, os.makedev(0, 0))
    data, index = layer(root, overlay_upper=True)
    recomputed = index_of_tar(io.BytesIO(data))
    assert recomputed["/etc/gone"] == {"type": "whiteout"} == index["/etc/gone"]
    assert recomputed == index


# -- merge_indexes --------------------------------------------------------


def f(sha: str = "0" * 64, mode: str = "0644") -> dict[str, Any]:
    return {"type": "file", "mode": mode, "uid": 0, "gid": 0, "size": 1, "sha256": sha}


def d() -> dict[str, Any]:
    return {"type": "dir", "mode": "0755", "uid": 0, "gid": 0}


def test_merge_upper_overrides_lower() -> None:
    lower = {"/": d(), "/etc": d(), "/etc/a": f("1" * 64), "/etc/b": f()}
    upper = {"/etc": d(), "/etc/a": f("2" * 64, "0600"), "/etc/c": f()}
    merged = merge_indexes([lower, upper])
    assert merged["/etc/a"] == f("2" * 64, "0600")
    assert set(merged) == {"/", "/etc", "/etc/a", "/etc/b", "/etc/c"}


def test_merge_whiteout_removes_path_and_children() -> None:
    lower = {
        "/": d(),
        "/opt": d(),
        "/opt/app": d(),
        "/opt/app/x": f(),
        "/opt/app/sub": d(),
        "/opt/app/sub/y": f(),
        "/opt/appendix": f(),  # shares the string prefix, not the directory
        "/etc/gone": f(),
    }
    upper = {"/opt": d(), "/opt/app": {"type": "whiteout"}, "/etc/gone": {"type": "whiteout"}}
    merged = merge_indexes([lower, upper])
    assert set(merged) == {"/", "/opt", "/opt/appendix"}


def test_merge_whiteout_of_missing_path_is_harmless() -> None:
    assert merge_indexes([{"/": d()}, {"/nothing": {"type": "whiteout"}}]) == {"/": d()}


def test_merge_opaque_dir_hides_lower_content_keeps_new() -> None:
    lower = {
        "/": d(),
        "/etc": d(),
        "/etc/app": d(),
        "/etc/app/old": f(),
        "/etc/app/sub/z": f(),
        "/etc/x": f(),
    }
    upper = {"/etc/app": {**d(), "mode": "0700", "opaque": True}, "/etc/app/new": f("3" * 64)}
    merged = merge_indexes([lower, upper])
    assert set(merged) == {"/", "/etc", "/etc/app", "/etc/app/new", "/etc/x"}
    assert merged["/etc/app"] == {**d(), "mode": "0700"}  # 'opaque' does not leak into the result
    assert merged["/etc/app/new"]["sha256"] == "3" * 64


def test_merge_three_layers_whiteout_then_recreate() -> None:
    a = {"/srv": d(), "/srv/f": f("1" * 64)}
    b = {"/srv/f": {"type": "whiteout"}}
    c = {"/srv/f": f("2" * 64)}
    assert merge_indexes([a, b])["/srv"] == d()
    assert "/srv/f" not in merge_indexes([a, b])
    assert merge_indexes([a, b, c])["/srv/f"]["sha256"] == "2" * 64


def test_merge_does_not_mutate_inputs() -> None:
    upper = {"/etc": {**d(), "opaque": True}}
    merge_indexes([{"/etc/a": f()}, upper])
    assert upper["/etc"]["opaque"] is True


# -- clean_rootfs ---------------------------------------------------------


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    touch(root / "etc/machine-id", b"0123456789abcdef\n")
    touch(root / "etc/hostname", b"builder\n")
    touch(root / "etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n")
    touch(root / "var/log/apt/history.log", b"log\n")
    touch(root / "var/log/dpkg.log", b"log\n")
    touch(root / "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease", b"index\n")
    touch(root / "var/lib/apt/lists/lock", b"")
    touch(root / "var/cache/apt/pkgcache.bin", b"cache\n")
    touch(root / "tmp/scratch", b"x")
    touch(root / "etc/apt/sources.list", b"deb http://deb.debian.org/debian bookworm main\n")
    touch(root / "etc/apt/sources.list.d/host.sources", b"Types: deb\n")
    touch(root / "etc/apt/trusted.gpg.d/key.gpg", b"key")
    (root / "var/lib/dbus").mkdir(parents=True)
    (root / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    return root


def test_clean_rootfs(rootfs: Path) -> None:
    clean_rootfs(rootfs)
    assert not (rootfs / "etc/machine-id").exists()
    assert not (rootfs / "etc/hostname").exists()
    assert not os.path.lexists(rootfs / "var/lib/dbus/machine-id")
    assert (rootfs / "etc/passwd").is_file()
    # var/log files go, the directories stay
    assert (rootfs / "var/log").is_dir() and (rootfs / "var/log/apt").is_dir()
    assert list((rootfs / "var/log").rglob("*")) == [rootfs / "var/log/apt"]
    assert list((rootfs / "var/lib/apt/lists").iterdir()) == []
    assert list((rootfs / "var/cache/apt").iterdir()) == []
    assert list((rootfs / "tmp").iterdir()) == []
    assert (rootfs / "etc/apt/sources.list").read_bytes() == SOURCES_NOTE
    assert list((rootfs / "etc/apt/sources.list.d").iterdir()) == []
    assert (rootfs / "etc/apt/trusted.gpg.d/key.gpg").is_file()


def test_clean_rootfs_twice_and_layer_is_stable(rootfs: Path) -> None:
    clean_rootfs(rootfs)
    first = layer(rootfs)[0]
    clean_rootfs(rootfs)
    assert layer(rootfs)[0] == first


def test_clean_rootfs_without_apt_creates_no_sources(tmp_path: Path) -> None:
    root = tmp_path / "r"
    touch(root / "etc/passwd", b"")
    clean_rootfs(root)
    assert not (root / "etc/apt").exists()


def test_clean_rootfs_does_not_follow_symlinked_dirs_it_empties(rootfs: Path, tmp_path: Path) -> None:
    outside = tmp_path / "host-logs"
    touch(outside / "keep.log", b"host\n")
    shutil.rmtree(rootfs / "var/log")
    (rootfs / "var/log").symlink_to(outside)
    clean_rootfs(rootfs)
    assert (outside / "keep.log").read_bytes() == b"host\n"


def test_clean_rootfs_does_not_follow_symlinked_parent_of_sources(rootfs: Path, tmp_path: Path) -> None:
    host_apt = tmp_path / "host-etc-apt"
    touch(host_apt / "sources.list", b"deb http://host/ bookworm main\n")
    touch(host_apt / "sources.list.d/keep.list", b"deb http://host/ bookworm main\n")
    shutil.rmtree(rootfs / "etc/apt")
    (rootfs / "etc/apt").symlink_to(host_apt)  # absolute: means <root>/<host_apt> in the image
    clean_rootfs(rootfs)
    assert (host_apt / "sources.list").read_bytes() == b"deb http://host/ bookworm main\n"
    assert (host_apt / "sources.list.d/keep.list").is_file()


def test_clean_rootfs_does_not_follow_symlinked_parent_of_lists(rootfs: Path, tmp_path: Path) -> None:
    host_apt = tmp_path / "host-var-lib-apt"
    touch(host_apt / "lists/host_InRelease", b"index\n")
    shutil.rmtree(rootfs / "var/lib/apt")
    (rootfs / "var/lib/apt").symlink_to(host_apt)
    clean_rootfs(rootfs)
    assert (host_apt / "lists/host_InRelease").is_file()
