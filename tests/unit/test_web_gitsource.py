"""The extraction of a commit's tree (gitsource.extract) refuses every hostile tar entry: absolute
names, '..', writing through a symlink, symlinks out of the tree (directly or through another
link), hard links, devices, duplicates, too many entries, too many bytes; a plain tree with an
inner symlink comes out with normalized modes."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from sandbox.web import gitsource
from sandbox.web.gitsource import GitError, extract

Entry = tuple[str, bytes | str | None, str]  # name, content or link target, kind


def tar_of(*entries: Entry) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data, kind in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(data, bytes)
                info.size, info.mode = len(data), 0o664
                t.addfile(info, io.BytesIO(data))
                continue
            if kind == "exe":
                assert isinstance(data, bytes)
                info.size, info.mode = len(data), 0o775
                t.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "hard": tarfile.LNKTYPE,
                "dev": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            if isinstance(data, str):
                info.linkname = data
            info.mode = 0o4777 if kind == "dir" else 0o644
            t.addfile(info)
    buf.seek(0)
    return buf


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "tree"
    d.mkdir()
    return d


def test_a_plain_tree_with_an_inner_symlink(dest: Path) -> None:
    counts = extract(
        tar_of(
            ("recipes/", None, "dir"),
            ("recipes/web.yaml", b"name: web\n", "file"),
            ("app/", None, "dir"),
            ("app/run", b"#!/bin/sh\n", "exe"),
            ("app/current", "../recipes", "sym"),
        ),
        dest,
    )
    assert counts == {"entries": 5, "bytes": 20}
    assert (dest / "app" / "current" / "web.yaml").read_text() == "name: web\n"
    assert stat.S_IMODE((dest / "recipes" / "web.yaml").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "app" / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "recipes").stat().st_mode) == 0o755  # no setuid from the entry


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([("/etc/cron.d/x", b"x", "file")], "absolute name"),
        ([("../escape", b"x", "file")], "'..'"),
        ([("a/../../escape", b"x", "file")], "'..'"),
        ([("l", "/etc", "sym")], "outside the tree"),
        ([("l", "../..", "sym")], "outside the tree"),
        ([("sub/", None, "dir"), ("l", "sub", "sym"), ("l/x", b"x", "file")], "its directory is a symlink"),
        ([("d/", None, "dir"), ("d/l1", "..", "sym"), ("l2", "d/l1/..", "sym")], "resolves outside"),
        ([("f", b"x", "file"), ("h", "f", "hard")], "not a file, directory or symlink"),
        ([("dev", None, "dev")], "not a file, directory or symlink"),
        ([("p", None, "fifo")], "not a file, directory or symlink"),
        ([("f", b"x", "file"), ("f", b"y", "file")], "appears twice"),
        ([("f", b"x", "file"), ("f", "/etc/passwd", "sym")], "appears twice"),
    ],
)
def test_hostile_entries_are_refused(dest: Path, tmp_path: Path, entries: list[Entry], why: str) -> None:
    with pytest.raises(GitError, match="unsafe entry") as e:
        extract(tar_of(*entries), dest)
    assert why in e.value.message
    assert not (tmp_path / "escape").exists() and not Path("/etc/cron.d/x").exists()


def test_too_many_entries_or_bytes(dest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gitsource, "MAX_ENTRIES", 3)
    with pytest.raises(GitError, match="more than 3 entries"):
        extract(tar_of(*[(f"f{i}", b"x", "file") for i in range(4)]), dest)
    monkeypatch.setattr(gitsource, "MAX_ENTRIES", 100)
    monkeypatch.setattr(gitsource, "MAX_BYTES", 10)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(GitError, match="over 10 bytes"):
        extract(tar_of(("a", b"123456", "file"), ("b", b"123456", "file")), other)
    assert os.path.getsize(other / "a") == 6 and not (other / "b").exists()
