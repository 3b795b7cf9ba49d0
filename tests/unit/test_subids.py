"""sandbox's subordinate ids: a range no other user's /etc/subuid or /etc/subgid entry overlaps,
chosen once per runtime dir, recorded, and checked at every start (tmp files, never /etc)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.subids import (
    RECORD,
    IdRange,
    SubIdEntry,
    SubIdOverlap,
    choose_range,
    ensure_subids,
    read_subids,
    runtime_ids,
)


def files(tmp_path: Path, uid: str, gid: str | None = None) -> tuple[Path, Path]:
    u, g = tmp_path / "subuid", tmp_path / "subgid"
    u.write_text(uid)
    g.write_text(uid if gid is None else gid)
    return u, g


def test_a_private_root_range_is_kept(tmp_path: Path) -> None:
    f = files(tmp_path, "root:100000:65536\n")
    uids, gids = ensure_subids(tmp_path / RECORD, files=f)
    assert uids == gids == IdRange(100000, 65536)
    assert f[0].read_text() == "root:100000:65536\n"  # nothing added
    assert (tmp_path / RECORD).read_text() == "uid 100000 65536\ngid 100000 65536\n"


def test_the_first_users_range_is_never_taken(tmp_path: Path) -> None:
    # Debian's useradd gives the first login user 100000:65536
    f = files(tmp_path, "alice:100000:65536\n")
    uids, gids = ensure_subids(tmp_path / RECORD, files=f)
    assert uids == gids == IdRange(165536, 65536)
    assert f[0].read_text() == "alice:100000:65536\nroot:165536:65536\n"
    assert f[1].read_text() == "alice:100000:65536\nroot:165536:65536\n"


def test_a_root_range_shared_with_another_user_is_not_reused(tmp_path: Path) -> None:
    f = files(tmp_path, "_lxd:100000:10000001\nroot:100000:10000001\nbob:20000000:65536")
    uids, _ = ensure_subids(tmp_path / RECORD, files=f)
    entries = read_subids(f[0])
    assert not any(e.owner != "root" and e.range.overlaps(uids) for e in entries)
    assert uids.start >= 10100001 and uids.count == 65536
    assert f[0].read_text().endswith(f"\nroot:{uids.start}:65536\n")  # a missing newline is added


def test_choose_range_skips_every_clash() -> None:
    entries = [
        SubIdEntry("a", IdRange(100000, 65536), 1),
        SubIdEntry("b", IdRange(165536, 100), 2),
        SubIdEntry("c", IdRange(300000, 65536), 3),
    ]
    rng = choose_range(entries)
    assert rng == IdRange(231072, 65536)  # the first free block of the grid 100000 + k * 65536
    assert not any(e.range.overlaps(rng) for e in entries)


def test_the_recorded_range_never_moves(tmp_path: Path) -> None:
    f = files(tmp_path, "root:100000:65536\n")
    first = ensure_subids(tmp_path / RECORD, files=f)
    f[0].write_text("root:500000:65536\nroot:100000:65536\n")  # a range added before ours later
    f[1].write_text("root:500000:65536\nroot:100000:65536\n")
    assert ensure_subids(tmp_path / RECORD, files=f) == first


def test_an_overlap_that_appears_later_is_refused_at_start_naming_the_entry_and_the_fix(
    tmp_path: Path,
) -> None:
    f = files(tmp_path, "root:100000:65536\n")
    ensure_subids(tmp_path / RECORD, files=f)
    f[1].write_text("root:100000:65536\nalice:100000:65536\n")  # useradd alice, later
    with pytest.raises(SubIdOverlap) as info:
        ensure_subids(tmp_path / RECORD, files=f)
    e = info.value
    assert "alice:100000:65536 (line 2)" in e.message and str(f[1]) in e.message
    assert e.hint is not None and "alice" in e.hint and str(tmp_path / RECORD) in e.hint


def test_envs_made_before_the_record_keep_their_range_or_are_refused(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    (runtime / "lxc" / "web-1-0").mkdir(parents=True)
    (runtime / "lxc" / "web-1-0" / "config").write_text("lxc.idmap = u 0 100000 65536\n")
    shared = files(tmp_path, "root:100000:65536\nalice:100000:65536\n")
    with pytest.raises(SubIdOverlap):
        runtime_ids(runtime, shared)
    assert not (runtime / RECORD).exists()
    private = files(tmp_path, "root:100000:65536\n")
    assert runtime_ids(runtime, private)[0] == IdRange(100000, 65536)
    assert (runtime / RECORD).is_file()


def test_the_lxc_backend_checks_the_range_at_every_start(tmp_path: Path) -> None:
    from sandbox.backends.base import BackendContext, ImageAccess
    from sandbox.backends.lxc import LxcBackend
    from sandbox.settings import Network
    from sandbox.store import ImageStore

    ctx = BackendContext(
        workspace_id="ws1",
        runtime=tmp_path / "run",
        tmp=tmp_path / "tmp",
        network=Network(),
        images=ImageAccess(ImageStore(tmp_path / "images")),
    )
    backend = LxcBackend(ctx)
    backend.subid_files = files(tmp_path, "alice:100000:65536\n")
    assert backend._ids()[0] == IdRange(165536, 65536)
    backend.subid_files[0].write_text("alice:100000:65536\nroot:165536:65536\nbob:150000:65536\n")
    with pytest.raises(SubIdOverlap, match="bob"):
        backend._ids()
