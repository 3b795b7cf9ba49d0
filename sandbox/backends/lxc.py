"""The embedded default backend: unprivileged LXC containers from liblxc's tools, no daemon.

Each image is unpacked once, shifted into root's subordinate id range, and
shared read-only by every instance; an instance is an overlayfs of that lower
dir and its own upper dir, so `up` costs the same for a small and a big image.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from sandbox.backends.base import Backend, BackendError, ExecResult, InstanceSpec, remove_stale_temps, run
from sandbox.backends.hostsetup import (
    SUBID_FILES,
    IdRange,
    ensure_bridge,
    gateway,
    raise_host_limits,
    runtime_ids,
)
from sandbox.backends.instancefiles import (
    APP_ENV_FILE,
    INSTANCE_ENV_FILE,
    instance_meta,
    parse_env_file,
    read_layered,
    write_instance_files,
)
from sandbox.backends.lxcconfig import LxcInstanceConfig, render_lxc_config
from sandbox.backends.lxcimages import image_root, unpack_once, unpacked_digests
from sandbox.backends.lxctools import cgroup_v2, host_prerequisites, lxc_errors, lxc_tool
from sandbox.events import Event
from sandbox.fsutil import private_dir, remove_tree
from sandbox.workspace import blocking_dir

EXEC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LxcBackend(Backend):
    name = "lxc"
    capabilities = frozenset({"snapshot", "clone", "init", "logs", "static-address"})
    subid_files: tuple[Path, Path] = SUBID_FILES  # /etc/subuid, /etc/subgid (tests use their own)

    @property
    def lxcpath(self) -> Path:
        return self.ctx.runtime / "lxc"

    @property
    def rootfs_dir(self) -> Path:
        return self.ctx.runtime / "rootfs"

    def _dir(self, name: str) -> Path:
        return self.lxcpath / name

    # -- prerequisites -----------------------------------------------------
    def check(self) -> None:
        host_prerequisites()
        self._ids()
        runtime = self.ctx.runtime
        blocked = blocking_dir(runtime)
        if blocked is not None:
            raise BackendError(
                f"container root cannot reach {runtime}: {blocked} does not let others traverse it",
                hint=f"chmod o+x {blocked}, or point SANDBOX_RUNTIME at a directory under /var/lib",
            )
        for change in raise_host_limits():
            self.sink(
                Event("log", phase="up", message=f"raised the host limit {change} (for many containers)")
            )
        ensure_bridge(self.ctx.network.bridge, self.ctx.network.subnet)
        self._private_dirs()

    def _private_dirs(self) -> None:
        """lxc's dirs: container root (the range's first gid) may traverse them, no other host user."""
        _, gids = self._ids()
        for d in (self.lxcpath, self.rootfs_dir):
            private_dir(d, 0o710, gids.start)

    def _ids(self) -> tuple[IdRange, IdRange]:
        return runtime_ids(self.ctx.runtime, self.subid_files)

    def _owner_ids(self) -> tuple[int, int]:
        uids, gids = self._ids()
        return uids.start, gids.start

    # -- images ------------------------------------------------------------
    def _image_root(self, digest: str) -> Path:
        uids, _ = self._ids()
        return image_root(self.rootfs_dir, digest, uids.start)

    def prepare_image(self, digest: str) -> None:
        uids, gids = self._ids()
        private_dir(self.rootfs_dir, 0o710, gids.start)
        with lxc_errors(f"image {digest[7:19]}", "unpacking"):
            unpack_once(self.rootfs_dir, self.store, digest, uids.start, gids.start, self.sink)

    def forget_image(self, digest: str) -> None:
        root = self._image_root(digest)
        if root.parent.is_dir():
            remove_tree(root.parent)

    def images(self) -> list[str]:
        """Digests of the images unpacked for this backend."""
        uids, _ = self._ids()
        return unpacked_digests(self.rootfs_dir, uids.start)

    def clean_stale(self) -> list[str]:
        """Half-unpacked images and half-made clones of processes that died."""
        return remove_stale_temps([self.rootfs_dir, self.lxcpath], ("unpack", "clone"))

    # -- instances ---------------------------------------------------------
    def _meta(self, name: str) -> dict[str, str]:
        return instance_meta(self._dir(name))

    def create(self, spec: InstanceSpec, upper_from: Path | None = None) -> None:
        if spec.address is None:
            raise BackendError(f"instance {spec.name} has no address", hint="this is a bug in sandbox")
        self.prepare_image(spec.image)
        uids, gids = self._ids()
        gw, prefix = gateway(self.ctx.network.subnet)
        d = self._dir(spec.name)
        if d.exists():
            raise BackendError(f"container {spec.name} already exists", hint="sandbox gc removes leftovers")
        private_dir(self.lxcpath, 0o710, gids.start)
        d.mkdir()
        private_dir(d, 0o710, gids.start)  # holds the upper dir: setuid files of container root
        upper = d / "delta0"
        if upper_from is not None:
            self._cp(upper_from, upper, spec.name, "copying the data of")
        else:
            upper.mkdir()
            os.chown(upper, uids.start, gids.start)
        write_instance_files(upper, spec, uids.start, gids.start)
        # overlayfs' workdir, created here because container root may not write to `d`
        (d / "work").mkdir()
        os.chown(d / "work", uids.start, gids.start)
        cfg = LxcInstanceConfig(
            name=spec.name,
            lower=str(self._image_root(spec.image)),
            upper=str(upper),
            uid_start=uids.start,
            uid_count=uids.count,
            gid_start=gids.start,
            gid_count=gids.count,
            bridge=self.ctx.network.bridge,
            address=spec.address,
            prefix=prefix,
            gateway=gw,
            console_log=str(d / "console.log"),
            cgroup_v2=cgroup_v2(),
            cpus=spec.cpus,
            memory=spec.memory,
            pids=spec.pids,
            mounts=spec.mounts,
        )
        (d / "config").write_text(render_lxc_config(cfg))
        (d / "sandbox.json").write_text(
            json.dumps(
                {"image": spec.image, "env": spec.env, "address": spec.address, "index": str(spec.index)}
            )
        )

    def _lxc(
        self, tool: str, name: str, *args: str, what: str, timeout: float | None = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run lxc tool `tool` on instance `name`; a failure (with `check`) is a BackendError (lxctools)."""
        argv = [tool, "-P", str(self.lxcpath), "-n", name, *args]
        return lxc_tool(argv, instance=name, what=what, log=self._log(name), timeout=timeout, check=check)

    def _log(self, name: str) -> Path:
        return self._dir(name) / "lxc.log"

    def _cp(self, src: Path, dest: Path, name: str, what: str) -> None:
        lxc_tool(["cp", "-a", "--reflink=auto", str(src), str(dest)], instance=name, what=what, timeout=None)

    def start(self, name: str) -> None:
        address = self._meta(name).get("address")
        if address:
            # the address may have belonged to an instance removed moments ago: forget its MAC, or
            # the host keeps sending to it until the neighbour entry times out (tens of seconds)
            run(["ip", "neigh", "flush", "to", address], timeout=10)
        self._lxc("lxc-start", name, "-o", str(self._log(name)), "-l", "WARN", what="starting")

    def stop(self, name: str, timeout: float = 10.0) -> None:
        if self.state(name) != "running":
            return
        p = self._lxc(
            "lxc-stop", name, "-t", str(int(timeout)), what="stopping", timeout=timeout + 10, check=False
        )
        if p.returncode != 0 and self.state(name) == "running":
            self._lxc("lxc-stop", name, "-k", what="killing")

    def destroy(self, name: str) -> None:
        d = self._dir(name)
        if not d.exists():
            return
        if self.state(name) == "running":
            self._lxc("lxc-stop", name, "-k", what="killing", check=False)  # it may stop meanwhile
        with lxc_errors(name, "removing"):
            remove_tree(d)

    def state(self, name: str) -> str:
        if not (self._dir(name) / "config").exists():
            return "missing"
        p = self._lxc("lxc-info", name, "-s", "-H", what="asking the state of", timeout=20, check=False)
        return "running" if p.stdout.strip() == "RUNNING" else "stopped"

    def address(self, name: str) -> str:
        addr = self._meta(name).get("address")
        if not addr:
            raise BackendError(f"instance {name} has no recorded address")
        return addr

    def _layers(self, name: str) -> list[Path]:
        """The instance's upper dir, then its image's root: what overlayfs shows inside, upper first."""
        return [self._dir(name) / "delta0", self._image_root(self._meta(name).get("image", ""))]

    def _user_ids(self, name: str, user: str) -> tuple[int, int, str]:
        data = read_layered(self._layers(name), "etc/passwd", name)
        for line in (data or b"").decode(errors="replace").splitlines():
            f = line.split(":")
            if f[0] == user and len(f) >= 6:
                try:
                    return int(f[2]), int(f[3]), f[5]
                except ValueError:
                    break
        raise BackendError(f"user {user!r} does not exist in instance {name}")

    def _app_env(self, name: str) -> dict[str, str]:
        """The app's environment: the recipe's env file, then this instance's (sandbox and profile).

        Both files are the instance's own: read through saferoot (a link or FIFO there is ignored
        with a warning, never followed to a host file)."""
        layers = self._layers(name)
        out: dict[str, str] = {}
        for rel in (APP_ENV_FILE, INSTANCE_ENV_FILE):
            data = read_layered(layers, rel, name, self.sink)
            if data is not None:
                out.update(parse_env_file(data.decode(errors="replace")))
        return out

    def exec(
        self,
        name: str,
        argv: list[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        interactive: bool = False,
        timeout: float | None = None,
    ) -> ExecResult:
        cmd = [*self._attach(name)]
        for k, v in self._app_env(name).items():  # what the app sees, as on every backend
            cmd += ["--set-var", f"{k}={v}"]
        cmd += [
            "--set-var",
            f"PATH={EXEC_PATH}",
            "--set-var",
            "LANG=C.UTF-8",
        ]
        home = "/root"
        if user and user != "root":
            uid, gid, home = self._user_ids(name, user)
            cmd += [
                "-u",
                str(uid),
                "-g",
                str(gid),
                "--set-var",
                f"USER={user}",
                "--set-var",
                f"LOGNAME={user}",
            ]
        cmd += ["--set-var", f"HOME={home}"]
        if interactive:
            cmd += ["--set-var", f"TERM={os.environ.get('TERM', 'xterm')}"]
        for k, v in (env or {}).items():
            cmd += ["--set-var", f"{k}={v}"]
        cmd += ["--", *argv]
        # a non-zero exit is the command's own result; only a missing tool or a timeout is an error
        with lxc_errors(name, f"running {' '.join(argv)[:80]!r} in"):
            if interactive:
                return ExecResult(subprocess.call(cmd), "", "")
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        return ExecResult(p.returncode, p.stdout, p.stderr)

    def _attach(self, name: str) -> list[str]:
        """The start of every command run inside instance `name` (a clean environment)."""
        return ["lxc-attach", "-P", str(self.lxcpath), "-n", name, "--clear-env"]

    def put_file(self, name: str, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        # `cat` reads fd 0 as it is: container root may not reopen the host-owned pipe via /dev/stdin
        script = (
            'mkdir -p "$(dirname "$1")" && cat > "$1.sbxnew" && chown "$2" "$1.sbxnew" '
            '&& chmod "$3" "$1.sbxnew" && mv -f "$1.sbxnew" "$1"'
        )
        cmd = [
            *self._attach(name),
            "--",
            "/bin/sh",
            "-c",
            script,
            "sh",
            path,
            f"{uid}:{gid}",
            f"{mode:o}",
        ]
        with lxc_errors(name, f"writing {path} in"):
            p = subprocess.run(cmd, input=data, capture_output=True, check=False)
        if p.returncode != 0:
            raise BackendError(f"cannot write {path} in {name}: {p.stderr.decode(errors='replace').strip()}")

    def logs_argv(self, name: str, follow: bool, lines: int) -> list[str]:
        return [
            *self._attach(name),
            "--",
            "journalctl",
            "--no-pager",
            "-u",
            "sandbox-app.service",
            "-n",
            str(lines),
            *(["-f"] if follow else []),
        ]

    # -- snapshots and clones ----------------------------------------------
    @contextmanager
    def _frozen(self, name: str) -> Iterator[None]:
        running = self.state(name) == "running"
        if running:
            self._lxc("lxc-freeze", name, what="freezing")
        try:
            yield
        finally:
            if running:
                self._lxc("lxc-unfreeze", name, what="unfreezing")

    def snapshot(self, name: str, snap: str) -> dict[str, str]:
        d = self._dir(name)
        dest = d / "snaps" / snap
        if dest.exists():
            raise BackendError(f"snapshot {snap} of {name} exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._frozen(name):
            self._cp(d / "delta0", dest, name, f"snapshotting ({snap})")
        return {"path": str(dest)}

    def restore(self, name: str, snap: str) -> None:
        d = self._dir(name)
        src = d / "snaps" / snap
        if not src.is_dir():
            raise BackendError(f"instance {name} has no snapshot {snap}")
        was_running = self.state(name) == "running"
        self.stop(name)
        tmp = d / "delta0.restoring"
        if tmp.exists():
            remove_tree(tmp)
        self._cp(src, tmp, name, f"restoring snapshot {snap} of")
        remove_tree(d / "delta0")
        os.rename(tmp, d / "delta0")
        work = d / "work"
        if work.exists():
            remove_tree(work)
        work.mkdir()
        os.chown(work, *self._owner_ids())
        if was_running:
            self.start(name)

    def delete_snapshot(self, name: str, snap: str) -> None:
        path = self._dir(name) / "snaps" / snap
        if path.exists():
            remove_tree(path)

    def clone(self, src: str, spec: InstanceSpec) -> None:
        tmp = Path(tempfile.mkdtemp(dir=self.lxcpath, prefix=f".clone-{os.getpid()}-"))
        try:
            with self._frozen(src):
                self._cp(self._dir(src) / "delta0", tmp / "delta0", src, f"cloning (to {spec.name})")
            self.create(spec, upper_from=tmp / "delta0")
        finally:
            remove_tree(tmp)

    def instances(self) -> list[str]:
        if not self.lxcpath.is_dir():
            return []
        return sorted(p.name for p in self.lxcpath.iterdir() if (p / "config").exists())
