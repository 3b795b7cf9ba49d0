"""Build commands (`run:`, useradd, visudo, systemctl, the VM flavour's apt) run jailed: a hostile
command can change only the image being built. Each test plants an attack in a tiny image (the
host's python3 with its libraries and stdlib, copied) and checks that a tmp "host file" is unchanged.
Needs root and a kernel with idmapped mounts (as every build does)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.build.overlay import overlay
from sandbox.build.rootfs import run_in_root
from sandbox.errors import BuildError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the build jail needs root")

IDS = (1_600_000_000, 1_600_000_000, 65536)  # a range of its own: the jail maps it as real root
PY = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
SKIP_STDLIB = {
    "test",
    "idlelib",
    "tkinter",
    "lib2to3",
    "ensurepip",
    "turtledemo",
    "site-packages",
    "dist-packages",
}


def _copy_with_libs(binary: str, root: Path) -> None:
    dest = root / binary.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, dest)
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    for word in out.split():
        if word.startswith("/") and os.path.exists(word):
            lib = root / word.lstrip("/")
            lib.parent.mkdir(parents=True, exist_ok=True)
            if not lib.exists():
                shutil.copy2(word, lib)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lower dir: /bin/sh, python3 and its stdlib, /etc/passwd, empty /dev, /proc, /tmp."""
    root = tmp_path_factory.mktemp("image") / "lower"
    for d in ("etc", "dev", "proc", "tmp", "root"):
        (root / d).mkdir(parents=True)
    _copy_with_libs("/bin/sh", root)
    _copy_with_libs(PY, root)
    stdlib = sysconfig.get_paths(vars={"installed_base": "/usr", "base": "/usr"})["stdlib"]
    if not os.path.isdir(stdlib):
        stdlib = sysconfig.get_paths()["stdlib"]
    shutil.copytree(
        stdlib,
        root / stdlib.lstrip("/"),
        symlinks=True,
        ignore=lambda d, names: [n for n in names if n in SKIP_STDLIB or n == "__pycache__"],
    )
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return root


@pytest.fixture
def build(image: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    work = tmp_path / "build"
    work.mkdir(mode=0o700)  # like the builder's work dir: closed to everyone but root
    with overlay(image, work / "overlay", IDS) as (merged, upper):
        yield merged, upper


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """The 'host file' an attack aims at."""
    d = tmp_path / "host"
    d.mkdir()
    (d / "victim").write_text("host data\n")
    return d


def py(root: Path, code: str, **kw: bool) -> subprocess.CompletedProcess[str]:
    return run_in_root(root, [PY, "-I", "-S", "-c", textwrap.dedent(code)], **kw)


def host_unchanged(host: Path) -> None:
    assert sorted(p.name for p in host.iterdir()) == ["victim"]
    assert (host / "victim").read_text() == "host data\n"


def test_a_command_is_root_of_its_own_user_namespace_only_and_writes_image_ids(
    build: tuple[Path, Path],
) -> None:
    merged, upper = build
    p = py(
        merged,
        """
        import os
        print(os.getuid(), os.getgid())
        print(open("/proc/self/uid_map").read().split())
        open("/etc/new", "w").write("x")
        os.mkdir("/srv")
        os.chown("/srv", 33, 33)
        """,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "0 0"
    assert lines[1] == str(["0", str(IDS[0]), "65536"])
    # on disk the layer holds the image's own ids, not the shifted ones: layers stay reproducible
    st = os.stat(upper / "etc/new")
    assert (st.st_uid, st.st_gid) == (0, 0)
    st = os.stat(upper / "srv")
    assert (st.st_uid, st.st_gid) == (33, 33)


def test_a_chroot_escape_or_proc_1_root_reaches_only_the_image(build: tuple[Path, Path], host: Path) -> None:
    merged, upper = build
    victim = host / "victim"
    p = py(
        merged,
        f"""
        import os
        results = []
        # classic double chroot: chroot into a subdir without chdir, climb, chroot "."
        os.mkdir("/x")
        fd = os.open("/", os.O_RDONLY)
        os.chroot("/x")
        os.fchdir(fd)
        for _ in range(64):
            os.chdir("..")
        os.chroot(".")
        for path in ({str(victim)!r}, "/proc/1/root{victim}", "/proc/1/cwd/victim"):
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write("pwned\\n")
                results.append("wrote " + path)
            except OSError as e:
                results.append("refused " + path + " " + str(e.errno))
        print(results)
        """,
    )
    assert p.returncode == 0, p.stderr
    host_unchanged(host)
    # what it wrote landed in the image (its "/" after the escape is still the image root)
    assert (upper / str(victim).lstrip("/")).read_text() == "pwned\n"


def test_no_network_unless_the_recipe_asks(build: tuple[Path, Path]) -> None:
    merged, _ = build
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    code = f"""
        import socket
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect(("127.0.0.1", {port}))
            print("connected")
        except OSError as e:
            print("refused", e.errno)
        """
    try:
        p = py(merged, code)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith("refused"), p.stdout
        # the control: with run_network the same command reaches the host's loopback
        p = py(merged, code, network=True)
        assert p.stdout.startswith("connected"), (p.stdout, p.stderr)
    finally:
        listener.close()


def test_no_host_device_can_be_opened_or_made(build: tuple[Path, Path]) -> None:
    merged, upper = build
    p = py(
        merged,
        """
        import os, stat
        print(sorted(os.listdir("/dev")))
        for name, kind, dev in (("sda", stat.S_IFBLK, (8, 0)), ("mem", stat.S_IFCHR, (1, 1)),
                                ("kmsg", stat.S_IFCHR, (1, 11))):
            for d in ("/dev", "/tmp"):
                try:
                    os.mknod(f"{d}/{name}", 0o600 | kind, os.makedev(*dev))
                    print("made", d, name)
                except OSError as e:
                    print("refused", e.errno)
        for path in ("/dev/sda", "/dev/vda", "/dev/mem"):
            try:
                open(path, "rb").read(1)
                print("read", path)
            except OSError as e:
                print("refused", e.errno)
        print(open("/dev/null", "rb").read(1) == b"", len(open("/dev/urandom", "rb").read(8)))
        """,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == str(sorted(["fd", "full", "null", "pts", "random", "shm", "stderr", "stdin", "stdout",
                                   "tty", "urandom", "zero"]))  # fmt: skip
    assert not any(line.startswith(("made", "read")) for line in lines), lines
    assert lines[-1] == "True 8"
    assert not (upper / "dev").exists()  # the jail's /dev is a tmpfs, never part of the layer


def test_an_image_whose_dev_is_a_symlink_is_refused(image: Path, tmp_path: Path, host: Path) -> None:
    lower = tmp_path / "lower"
    shutil.copytree(image, lower, symlinks=True)
    (lower / "dev").rmdir()
    (lower / "dev").symlink_to(str(host))
    with overlay(lower, tmp_path / "ov", IDS) as (merged, _):
        p = run_in_root(merged, ["/bin/sh", "-c", "echo pwned > /dev/victim"])
    assert p.returncode != 0
    assert "/dev is not a directory" in p.stderr
    host_unchanged(host)


def test_a_command_cannot_signal_or_see_host_processes(build: tuple[Path, Path]) -> None:
    merged, _ = build
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        p = py(
            merged,
            f"""
            import os
            print(sorted(int(d) for d in os.listdir("/proc") if d.isdigit()))
            try:
                os.kill({sleeper.pid}, 9)
                print("killed")
            except OSError as e:
                print("refused", e.errno)
            """,
        )
        assert p.returncode == 0, p.stderr
        pids, verdict = p.stdout.splitlines()
        assert pids == "[1]"
        assert verdict.startswith("refused")
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_run_in_root_refuses_a_root_that_is_not_a_build_overlay(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="not an image being built"):
        run_in_root(tmp_path, ["/bin/true"])
