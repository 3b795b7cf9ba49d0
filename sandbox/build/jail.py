"""Run one build command in the image being built, with no power over the host.

Started by `sandbox.build.rootfs.run_in_root` as `python3 -I jail.py SPEC` (real root, stdlib only,
so nothing of sandbox is imported into a process that ends up inside the image). It:

1. makes a user namespace whose only use is to describe the id shift (image id N <-> host id
   START+N), and with it *idmapped mounts* of the overlay's lower dir and of the dir holding its
   upper and work dirs: through them the image's files (owned by 0.. on disk) look owned by the
   shifted ids, and what the command writes lands on disk with the image's own ids, so layers stay
   byte-for-byte what they were (no chown back and forth);
2. mounts an overlayfs of those idmapped layers in a private mount namespace, with a fresh /dev
   (a tmpfs holding only null, zero, full, random, urandom, tty) over the image's /dev;
3. starts the command in new user, mount, pid, ipc, uts (and, unless the spec allows the network,
   net) namespaces, as uid/gid 0 *of that user namespace* = host uid/gid START: it has
   capabilities only over its own namespaces, no host device can be opened or made, and
   `pivot_root` plus a detached old root leave no path to the host's filesystem (a double chroot
   or /proc/1/root ends in the image).

The caller unmounts its own (plain) mount of the same overlay first: one overlay instance per
upper dir at a time.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 1 << 18
MNT_DETACH = 2
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, 0o2000000
AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE = -100, 0x1000, 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 4
MOUNT_ATTR_IDMAP = 0x00100000
PR_SET_PDEATHSIG = 1
# the same on every architecture (the unified syscall table starts at 424)
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
EXIT_SETUP = 125  # the jail itself failed (the message is on stderr)

libc = ctypes.CDLL(None, use_errno=True)


class MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class JailError(Exception):
    pass


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(err)}")
    return ret


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(
        libc.mount(
            src.encode() if src else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {fstype or src} on {target}",
    )


def _unshare(flags: int, what: str) -> None:
    _check(libc.unshare(ctypes.c_int(flags)), f"unshare ({what})")


def _write_maps(pid: int, uid_map: str, gid_map: str) -> None:
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(uid_map)
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(gid_map)


def _userns_child(uid_map: str, gid_map: str) -> tuple[int, int]:
    """A child in a new user namespace with these maps, stopped; returns (pid, ns fd)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(go_w)
            _unshare(CLONE_NEWUSER, "idmap namespace")
            os.write(ready_w, b"1")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    if os.read(ready_r, 1) != b"1":
        raise JailError("the id-map namespace could not be made")
    os.close(ready_r)
    _write_maps(pid, uid_map, gid_map)
    fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    os.close(go_w)  # the child exits; the fd keeps the namespace
    os.waitpid(pid, 0)
    return pid, fd


def _idmapped_bind(src: str, target: str, userns_fd: int) -> None:
    fd = _check(
        libc.syscall(SYS_OPEN_TREE, AT_FDCWD, src.encode(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC),
        f"open_tree {src}",
    )
    try:
        attr = MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        _check(
            libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)),
            f"idmapping {src} (the kernel needs idmapped mounts, Linux >= 5.19)",
        )
        _check(
            libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH),
            f"move_mount {target}",
        )
    finally:
        os.close(fd)


def _real_dir(path: str, what: str) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise JailError(f"the image's {what} is not a directory (a symlink or file): refusing to run in it")


def _make_dev(dev: str) -> None:
    """A tmpfs with only harmless device nodes, made by real root (the jail cannot mknod)."""
    _mount("sbxdev", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=1024k,nr_inodes=64")
    for name, (major, minor) in DEVICES.items():
        path = os.path.join(dev, name)
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(path, 0o666)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        os.symlink(target, os.path.join(dev, name))
    os.symlink("/proc/self/fd/1", os.path.join(dev, "stdout"))
    os.symlink("/proc/self/fd/2", os.path.join(dev, "stderr"))
    for d in ("pts", "shm"):
        os.mkdir(os.path.join(dev, d), 0o1777 if d == "shm" else 0o755)


def _inside(argv: list[str], env: dict[str, str]) -> None:
    """In the new namespaces (pid 1 of its pid namespace), the cwd at the image root (opened while
    still host root: the dirs above it need not be open to the shifted ids): /proc, pivot_root,
    exec. Never returns."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    nr = SYS_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise JailError(f"pivot_root: unknown architecture {platform.machine()}")
    _check(libc.syscall(nr, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detaching the host's root")
    os.chdir("/")
    os.closerange(3, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
    os.execvpe(argv[0], argv, env)


def run(spec: dict) -> int:  # type: ignore[type-arg]
    lower, upper, work, stage = spec["lower"], spec["upper"], spec["work"], spec["stage"]
    uid, gid, count = int(spec["uid"]), int(spec["gid"]), int(spec["count"])
    layers = os.path.dirname(upper)
    if os.path.dirname(work) != layers:
        raise JailError("the overlay's upper and work dirs must share a parent")
    # the mount's id map: image id N <-> host START+N; and one extra id (`count`) for host root, so
    # overlayfs (which makes its work dirs as the mounter, root) can write the work dir
    mount_uids = f"0 {uid} {count}\n{count} 0 1\n"
    mount_gids = f"0 {gid} {count}\n{count} 0 1\n"
    _pid, mapfd = _userns_child(mount_uids, mount_gids)
    _unshare(CLONE_NEWNS, "mount")
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    lo, up, root = (os.path.join(stage, d) for d in ("lower", "layers", "root"))
    for d in (lo, up, root):
        os.mkdir(d, 0o700)
    _idmapped_bind(lower, lo, mapfd)
    _idmapped_bind(layers, up, mapfd)
    os.close(mapfd)
    opts = (
        f"lowerdir={lo},upperdir={up}/{os.path.basename(upper)},workdir={up}/{os.path.basename(work)},"
        "redirect_dir=off,metacopy=off"
    )
    _mount("overlay", root, "overlay", 0, opts)
    _real_dir(os.path.join(root, "dev"), "/dev")
    _real_dir(os.path.join(root, "proc"), "/proc")
    _make_dev(os.path.join(root, "dev"))

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        code = EXIT_SETUP
        try:
            os.close(ready_r)
            os.close(go_w)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            _unshare(CLONE_NEWUSER, "user")
            os.write(ready_w, b"1")
            os.close(ready_w)
            if os.read(go_r, 1) != b"1":
                raise JailError("the id map was not written")
            flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
            if not spec.get("network"):
                flags |= CLONE_NEWNET
            _unshare(flags, "mount, pid, ipc, uts, net")
            # a mount of our own (not one locked from the parent namespace) for pivot_root; made while
            # the kernel still sees us as host uid 0, which may traverse root's 0700 build dirs
            _mount(root, root, None, MS_BIND | MS_REC, None)
            os.chdir(root)
            os.setresgid(0, 0, 0)
            os.setgroups([])
            os.setresuid(0, 0, 0)
            init = os.fork()  # pid 1 of the new pid namespace
            if init == 0:
                try:
                    _inside(spec["argv"], spec["env"])
                except JailError as e:
                    print(f"sandbox jail: {e}", file=sys.stderr)
                    os._exit(EXIT_SETUP)
                except OSError as e:
                    print(f"sandbox jail: {spec['argv'][0]}: {e.strerror}", file=sys.stderr)
                    os._exit(127)
            _, status = os.waitpid(init, 0)
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
        except JailError as e:
            print(f"sandbox jail: {e}", file=sys.stderr)
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    if os.read(ready_r, 1) != b"1":
        _, status = os.waitpid(child, 0)
        return EXIT_SETUP
    # the command's own namespace: image id N is host START+N, nothing else is mapped
    _write_maps(child, f"0 {uid} {count}\n", f"0 {gid} {count}\n")
    os.write(go_w, b"1")
    os.close(go_w)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def main() -> int:
    spec = json.loads(sys.argv[1])
    try:
        return run(spec)
    except (JailError, OSError) as e:
        print(f"sandbox jail: {e}", file=sys.stderr)
        return EXIT_SETUP


if __name__ == "__main__":
    sys.exit(main())
