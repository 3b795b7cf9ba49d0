"""sandbox.saferoot: nothing outside the root is ever created, changed or opened, and nothing blocks.

Property tests plant links (absolute and relative, to outside and inside), `..`, FIFOs, device
nodes, files and directories at every component of a path, run each primitive in both link modes
with both resolvers (openat2 and the fallback component walk), and compare a snapshot of
everything outside the root before and after. Needs root (mknod) like the rest of the host tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox import saferesolve, saferoot
from sandbox.saferoot import (
    UnsafePath,
    copy_out_of_root,
    exists_in_root,
    lstat_in_root,
    mkdirs_in_root,
    open_in_root,
    read_in_root,
    remove_in_root,
    set_owner_in_root,
    symlink_in_root,
    write_in_root,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")

NULL_DEV = os.stat("/dev/null").st_rdev
ZERO_DEV = os.stat("/dev/zero").st_rdev


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(saferesolve, "use_openat2", request.param)
    return bool(request.param)


@contextlib.contextmanager
def deadline(seconds: int = 5) -> Iterator[None]:
    """Fail (instead of hanging the run) if the block blocks."""

    def boom(*_: Any) -> None:
        raise TimeoutError("blocked")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def snapshot(top: Path, *skip: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below `top` but `skip`: type, mode, owner, size, mtime, content hash, link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if Path(dirpath, d) not in skip]
        for name in [*dirs, *files, "."]:
            p = os.path.join(dirpath, name)
            s = os.lstat(p)
            extra: Any = None
            if stat.S_ISREG(s.st_mode):
                extra = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            elif stat.S_ISLNK(s.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISDIR(s.st_mode):
                extra = sorted(os.listdir(p))
            out[p] = (s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns, s.st_rdev, extra)
    return out


class World:
    """tmp/{root,outside}: `outside` holds a secret file, a dir, a FIFO and a device, like a host."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.root = top / "root"
        self.outside = top / "outside"
        self.root.mkdir()
        (self.outside / "dir").mkdir(parents=True)
        (self.outside / "secret").write_text("HOST_SECRET=1\n")
        (self.outside / "dir" / "hostname").write_text("host\n")
        os.mkfifo(self.outside / "fifo")
        os.mknod(self.outside / "null", 0o666 | stat.S_IFCHR, NULL_DEV)

    def plant(self, at: Path, kind: str) -> None:
        depth = len(at.relative_to(self.root).parts)
        up = "/".join([".."] * depth)
        if kind == "dir":
            at.mkdir()
        elif kind == "file":
            at.write_text("inside\n")
        elif kind == "fifo":
            os.mkfifo(at)
        elif kind == "chardev":
            os.mknod(at, 0o666 | stat.S_IFCHR, ZERO_DEV)
        elif kind == "link-abs-out":
            at.symlink_to(self.outside / "dir")
        elif kind == "link-abs-out-file":
            at.symlink_to(self.outside / "secret")
        elif kind == "link-rel-out":
            at.symlink_to(f"{up}/outside/dir")
        elif kind == "link-rel-out-file":
            at.symlink_to(f"{up}/outside/secret")
        elif kind == "link-abs-in":  # absolute: inside under chroot rules, outside for the host
            at.symlink_to("/dir")
        elif kind == "link-rel-in":
            (self.root / "real").mkdir(exist_ok=True)
            at.symlink_to(f"{up}/real" if depth > 1 else "real")
        elif kind == "link-proc":
            at.symlink_to("/proc/self/root/" + str(self.outside).lstrip("/"))
        elif kind == "link-loop":
            at.symlink_to(at.name)


KINDS = [
    "none", "dir", "file", "fifo", "chardev", "link-abs-out", "link-abs-out-file", "link-rel-out",
    "link-rel-out-file", "link-abs-in", "link-rel-in", "link-proc", "link-loop",
]  # fmt: skip
NAMES = st.sampled_from(["a", "b", "hostname", "..", "."])
OPS = [
    "write", "read", "mkdirs", "symlink", "remove", "owner", "lstat", "exists", "copy", "open",
]  # fmt: skip


def run_op(op: str, root: Path, rel: str, links: saferoot.Links, scratch: Path) -> None:
    if op == "write":
        write_in_root(root, rel, b"instance\n", 0o644, 100000, 100000, links=links, parents=(0o755, 0, 0))
    elif op == "read":
        read_in_root(root, rel, 64, links=links)
    elif op == "mkdirs":
        os.close(mkdirs_in_root(root, rel, 0o755, 100000, 100000, links=links))
    elif op == "symlink":
        symlink_in_root(root, rel, "/etc/passwd", links=links)
    elif op == "remove":
        remove_in_root(root, rel, links=links)
    elif op == "owner":
        set_owner_in_root(root, rel, 0o700, 100000, 100000, links=links)
    elif op == "lstat":
        lstat_in_root(root, rel, links=links)
    elif op == "exists":
        exists_in_root(root, rel, links=links)
    elif op == "copy":
        copy_out_of_root(root, rel, scratch / "copied", 64, links=links)
    elif op == "open":
        os.close(open_in_root(root, rel, os.O_RDONLY | os.O_NONBLOCK | os.O_DIRECTORY, links=links))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(NAMES, min_size=1, max_size=4),
    kinds=st.lists(st.sampled_from(KINDS), min_size=4, max_size=4),
    op=st.sampled_from(OPS),
    links=st.sampled_from(["refuse", "in_root"]),
    openat2=st.booleans(),
)
def test_nothing_outside_the_root_changes(
    names: list[str], kinds: list[str], op: str, links: saferoot.Links, openat2: bool
) -> None:
    top = Path(tempfile.mkdtemp(prefix="saferoot-"))
    old = saferesolve.use_openat2
    saferesolve.use_openat2 = openat2
    try:
        w = World(top)
        scratch = top / "scratch"
        scratch.mkdir()
        # plant kinds[i] at the i-th prefix of the path (as long as the path goes through dirs)
        at = w.root
        for name, kind in zip(names, kinds, strict=False):
            if name in ("..", "."):
                continue
            at = at / name
            if os.path.lexists(at):
                break
            if kind == "none":
                break
            w.plant(at, kind)
            if kind != "dir":
                break
        before = snapshot(top, w.root, scratch)
        rel = "/".join(names)
        with deadline(), contextlib.suppress(UnsafePath, OSError):
            run_op(op, w.root, rel, links, scratch)
        after = snapshot(top, w.root, scratch)
        after.pop(str(top / "."), None)
        before.pop(str(top / "."), None)
        assert after == before, f"{op} {rel!r} ({links}) changed something outside the root"
    finally:
        saferesolve.use_openat2 = old
        shutil.rmtree(top)


# -- the rules, one by one (both resolvers) -----------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_read_regular_file(world: World, resolver: bool) -> None:
    (world.root / "etc").mkdir()
    (world.root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    assert read_in_root(world.root, "/etc/passwd") == b"root:x:0:0::/root:/bin/sh\n"
    with pytest.raises(FileNotFoundError):
        read_in_root(world.root, "/etc/shadow")


@pytest.mark.parametrize("kind", ["fifo", "chardev", "link-abs-out-file", "link-rel-out-file", "link-proc"])
def test_read_refuses_non_regular_and_links_without_blocking(world: World, resolver: bool, kind: str) -> None:
    (world.root / "etc").mkdir()
    world.plant(world.root / "etc/passwd", kind)
    with deadline(), pytest.raises(UnsafePath):
        read_in_root(world.root, "etc/passwd")


def test_read_in_root_mode_takes_absolute_links_inside(world: World, resolver: bool) -> None:
    (world.root / "dir").mkdir()
    (world.root / "dir/secret").write_text("inside\n")
    (world.root / "etc").symlink_to(str(world.outside))  # an absolute link that names a host dir
    (world.root / "x").symlink_to("/dir/secret")
    assert read_in_root(world.root, "x", links="in_root") == b"inside\n"
    with pytest.raises(FileNotFoundError):  # /outside/.. is looked up inside the root: absent
        read_in_root(world.root, "etc/secret", links="in_root")
    with pytest.raises(UnsafePath):
        read_in_root(world.root, "x", links="refuse")


def test_read_limit(world: World, resolver: bool) -> None:
    (world.root / "big").write_bytes(b"x" * 100)
    assert read_in_root(world.root, "big", 100) == b"x" * 100
    with pytest.raises(UnsafePath, match="larger than 99 bytes"):
        read_in_root(world.root, "big", 99)


def test_dotdot_cannot_climb(world: World, resolver: bool) -> None:
    with pytest.raises(UnsafePath):
        read_in_root(world.root, "../outside/secret")
    with pytest.raises(FileNotFoundError):  # chroot rules: /.. is /
        read_in_root(world.root, "../outside/secret", links="in_root")


def test_write_replaces_a_link_in_the_last_component(world: World, resolver: bool) -> None:
    (world.root / "etc").mkdir()
    (world.root / "etc/hostname").symlink_to(world.outside / "secret")
    write_in_root(world.root, "etc/hostname", b"dev-c-0\n", 0o644, 100000, 100000)
    assert (world.outside / "secret").read_text() == "HOST_SECRET=1\n"
    got = world.root / "etc/hostname"
    assert not got.is_symlink() and got.read_bytes() == b"dev-c-0\n"
    assert (got.stat().st_uid, stat.S_IMODE(got.stat().st_mode)) == (100000, 0o644)


@pytest.mark.parametrize("kind", ["link-abs-out", "link-rel-out", "link-abs-in", "link-proc", "file", "fifo"])
def test_write_refuses_a_non_directory_parent(world: World, resolver: bool, kind: str) -> None:
    world.plant(world.root / "etc", kind)
    with deadline(), pytest.raises(UnsafePath):
        write_in_root(world.root, "etc/hostname", b"x\n", parents=(0o755, 0, 0))
    assert (world.outside / "dir" / "hostname").read_text() == "host\n"
    assert not (world.outside / "hostname").exists()


def test_write_in_root_mode_follows_links_inside(world: World, resolver: bool) -> None:
    (world.root / "usr/lib").mkdir(parents=True)
    (world.root / "lib").symlink_to("usr/lib")
    (world.root / "var").mkdir()
    (world.root / "var/run").symlink_to(str(world.outside / "dir"))  # host-absolute: rooted instead
    write_in_root(world.root, "/lib/x.conf", b"1", links="in_root")
    assert (world.root / "usr/lib/x.conf").read_bytes() == b"1"
    inside = world.root / str(world.outside / "dir").lstrip("/") / "hostname"
    assert not inside.parent.exists()  # a dangling link: its target is made, inside the root
    write_in_root(world.root, "/var/run/hostname", b"2", links="in_root", parents=(0o755, 0, 0))
    assert inside.read_bytes() == b"2"
    assert (world.outside / "dir" / "hostname").read_text() == "host\n"


def test_write_over_a_fifo_or_device_replaces_it(world: World, resolver: bool) -> None:
    world.plant(world.root / "f", "fifo")
    world.plant(world.root / "d", "chardev")
    with deadline():
        write_in_root(world.root, "f", b"1")
        write_in_root(world.root, "d", b"2")
    assert (world.root / "f").read_bytes() == b"1" and (world.root / "d").read_bytes() == b"2"


def test_write_a_stream_and_refuse_a_directory(world: World, resolver: bool) -> None:
    write_in_root(world.root, "s", io.BytesIO(b"streamed"))
    assert (world.root / "s").read_bytes() == b"streamed"
    (world.root / "d").mkdir()
    with pytest.raises(UnsafePath, match="is a directory"):
        write_in_root(world.root, "d", b"x")
    assert [p.name for p in world.root.iterdir() if p.name.startswith(".sbx-")] == []


def test_mkdirs_owner_only_on_new_dirs(world: World, resolver: bool) -> None:
    (world.root / "etc").mkdir(mode=0o755)
    os.close(mkdirs_in_root(world.root, "etc/sandbox/x", 0o750, 100000, 100001))
    assert (world.root / "etc").stat().st_uid == 0
    s = (world.root / "etc/sandbox/x").stat()
    assert (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)) == (100000, 100001, 0o750)


def test_symlink_and_remove(world: World, resolver: bool) -> None:
    symlink_in_root(world.root, "l", "/etc/passwd", 100000, 100000)
    assert os.readlink(world.root / "l") == "/etc/passwd"
    assert os.lstat(world.root / "l").st_uid == 100000
    assert remove_in_root(world.root, "l") and not os.path.lexists(world.root / "l")
    assert not remove_in_root(world.root, "l")


def test_set_owner_refuses_links(world: World, resolver: bool) -> None:
    world.plant(world.root / "ssh", "link-abs-out")
    with pytest.raises(UnsafePath):
        set_owner_in_root(world.root, "ssh", 0o700, 100000, 100000, links="in_root")
    assert (world.outside / "dir").stat().st_uid == 0


def test_copy_out_bounded(world: World, resolver: bool, tmp_path: Path) -> None:
    (world.root / "boot").mkdir()
    (world.root / "boot/vmlinuz-1").write_bytes(b"k" * 10)
    copy_out_of_root(world.root, "boot/vmlinuz-1", tmp_path / "k", 10)
    assert (tmp_path / "k").read_bytes() == b"k" * 10
    with pytest.raises(UnsafePath):
        copy_out_of_root(world.root, "boot/vmlinuz-1", tmp_path / "k2", 9)
    (world.root / "boot/vmlinuz-2").symlink_to(world.outside / "secret")
    with pytest.raises(FileNotFoundError):  # in_root: the host path is looked up inside the image
        copy_out_of_root(world.root, "boot/vmlinuz-2", tmp_path / "k3", 100)


# -- chroot rules ("in_root"): where a write lands (was build.rootfs.resolve_in_root's suite) ----


@pytest.fixture
def usr_merged(tmp_path: Path) -> Path:
    r = tmp_path / "img"
    for d in ("usr/bin", "usr/lib", "etc/nginx", "run/lock", "var", "srv", "opt/real"):
        (r / d).mkdir(parents=True)
    (r / "bin").symlink_to("usr/bin")
    (r / "lib").symlink_to("usr/lib")
    (r / "var/run").symlink_to("/run")
    (r / "var/lock").symlink_to("../run/lock")
    (r / "opt/app").symlink_to("real")
    (r / "srv/conf").symlink_to("/etc")
    (r / "srv/top").symlink_to("/")
    (r / "srv/up").symlink_to("../../../../../../run")  # climbs above the root: clamped there
    (r / "srv/loop").symlink_to("loop")
    return r


@pytest.mark.parametrize(
    ("dest", "lands"),
    [
        ("/etc/nginx/site", "etc/nginx/site"),
        ("etc//nginx/./site2", "etc/nginx/site2"),
        ("/bin/tool", "usr/bin/tool"),
        ("/lib/x.so", "usr/lib/x.so"),
        ("/opt/app/config.py", "opt/real/config.py"),
        ("/var/lock/app.lock", "run/lock/app.lock"),
        ("/var/run/app.pid", "run/app.pid"),
        ("/srv/conf/passwd", "etc/passwd"),
        ("/srv/top/etc/hosts", "etc/hosts"),
        ("/srv/up/x", "run/x"),
        ("/etc/nginx/../hosts2", "etc/hosts2"),
        ("/bin/../lib/y", "usr/lib/y"),
        ("/../../etc/z", "etc/z"),
    ],
)
def test_in_root_writes_land_where_a_chroot_puts_them(
    usr_merged: Path, resolver: bool, dest: str, lands: str
) -> None:
    write_in_root(usr_merged, dest, b"x", links="in_root", parents=(0o755, 0, 0))
    assert (usr_merged / lands).read_bytes() == b"x"


def test_in_root_link_loop_is_refused(usr_merged: Path, resolver: bool) -> None:
    with pytest.raises(UnsafePath):
        write_in_root(usr_merged, "/srv/loop/x", b"x", links="in_root")


def test_root_given_through_a_link(usr_merged: Path, tmp_path: Path, resolver: bool) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(usr_merged)
    write_in_root(alias, "/bin/sh", b"sh", links="in_root")
    assert (usr_merged / "usr/bin/sh").read_bytes() == b"sh"
