"""The lxd backend: unprivileged system containers run by LXD, through pylxd, here or on a remote.

Each image is imported into LXD once (alias `sandbox-<12 hex of its digest>`) from the unified
tarball of sandbox/imageformats/lxd.py; instances are created from LXD's fingerprint of that tarball
(recorded in the store when it was written, never taken from the alias), get a routed NIC with
sandbox's address (see lxdconfig.py), the profile's limits and mounts, and the per-instance files
every backend writes (instancefiles.py). Snapshots and clones are LXD's own (copy-on-write where
the storage pool can, full copies on a `dir` pool). Errors are translated in lxdapi.lxd_errors.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sandbox.backends.base import (
    Backend,
    BackendContext,
    BackendError,
    ExecResult,
    InstanceSpec,
    remove_stale_temps,
)
from sandbox.backends.instancefiles import (
    APP_ENV_FILE,
    INSTANCE_ENV_FILE,
    file_mode,
    instance_files,
    parse_env_file,
)
from sandbox.backends.lxdapi import LOCAL_HINT, LXC_REMOTE, PylxdImages, connect, lxc_conf, lxd_errors
from sandbox.backends.lxdconfig import (
    ADDRESS_KEY,
    IMAGE_KEY,
    SANDBOX_POOL,
    WORKSPACE_KEY,
    copy_request,
    create_request,
    image_alias,
    workspace_id,
)
from sandbox.imageformats.lxd import import_lxd_image
from sandbox.saferoot import READ_LIMIT

EXEC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LxdBackend(Backend):
    name = "lxd"
    capabilities = frozenset({"snapshot", "clone", "init", "logs", "static-address", "remote"})

    _client: Any = None
    #: the LXD project of every call (None: LXD's default project; a production host's is restricted)
    project: str | None = None

    def __init__(self, ctx: BackendContext, remote: str | None = None) -> None:
        super().__init__(ctx, remote)
        self._fingerprints: dict[str, str] = {}  # digest → LXD's fingerprint, once prepared

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = connect(self.remote, project=self.project)
        return self._client

    @property
    def ws_id(self) -> str:
        return workspace_id(self.ctx.workspace_id)

    @contextmanager
    def _api(self, what: str) -> Iterator[None]:
        with lxd_errors(what, self.remote):
            yield

    @functools.cached_property
    def pool(self) -> str | None:
        """LXD storage pool `sandbox` when the host has one (scripts/backends.sh makes it on btrfs, where
        an instance is a snapshot of the image: ~0.5 s instead of a full copy on a `dir` pool)."""
        with self._api("listing storage pools"):
            return SANDBOX_POOL if self.client.storage_pools.exists(SANDBOX_POOL) else None

    # -- prerequisites -----------------------------------------------------
    def check(self) -> None:
        with self._api("checking LXD"):
            profile = self.client.profiles.get("default")
            roots = [d for d in profile.devices.values() if d.get("type") == "disk" and d.get("path") == "/"]
        if not roots:
            raise BackendError(
                "LXD's default profile has no root disk (LXD is not initialised)",
                hint=LOCAL_HINT
                if self.remote is None
                else "on that host: lxc profile device add default root disk path=/ pool=POOL"
                + (f" --project {self.project}" if self.project else ""),
            )

    # -- images ------------------------------------------------------------
    def _image(self, digest: str) -> Any:
        with self._api(f"looking up image {digest[:19]}"):
            try:
                return self.client.images.get_by_alias(image_alias(digest))
            except Exception as e:
                if type(e).__name__ == "NotFound":
                    return None
                raise

    def prepare_image(self, digest: str) -> None:
        images = PylxdImages(self.client, self._api)
        fp, _ = import_lxd_image(self.store, digest, image_alias(digest), images, self.ctx.tmp, self.sink)
        self._fingerprints[digest] = fp

    def clean_stale(self) -> list[str]:
        """Image tarballs of imports whose process died."""
        return remove_stale_temps([self.ctx.tmp], ("lxd",))

    def images(self) -> list[str]:
        """Digests of the sandbox images this LXD holds (shared by the workspaces that use it)."""
        with self._api("listing images"):  # whole documents: pylxd's names from URLs keep `?project=`
            images = self.client.api.images.get(params={"recursion": "1"}).json().get("metadata") or []
        return sorted(
            str(i["properties"]["sandbox.digest"])
            for i in images
            if isinstance(i, dict)
            and "sandbox.digest" in (i.get("properties") or {})
            and any(a.get("name", "").startswith("sandbox-") for a in i.get("aliases") or [])
        )

    def forget_image(self, digest: str) -> None:
        image = self._image(digest)
        if image is not None:
            with self._api(f"removing image {digest[:19]}"):
                image.delete(wait=True)

    # -- instances ---------------------------------------------------------
    def _get(self, name: str) -> Any:
        """This workspace's instance `name`, or None (absent, or another workspace's)."""
        with self._api(f"looking up {name}"):
            try:
                inst = self.client.instances.get(name)
            except Exception as e:
                if type(e).__name__ == "NotFound":
                    return None
                raise
        return inst if inst.config.get(WORKSPACE_KEY) == self.ws_id else None

    def _must(self, name: str) -> Any:
        inst = self._get(name)
        if inst is None:
            raise BackendError(f"instance {name} does not exist in LXD", hint="`sandbox ls` shows the envs")
        return inst

    def create(self, spec: InstanceSpec) -> None:
        if spec.address is None:
            raise BackendError(f"instance {spec.name} has no address", hint="this is a bug in sandbox")
        self.prepare_image(spec.image)
        fingerprint = self._fingerprints[spec.image]
        with self._api(f"creating {spec.name}"):
            request = create_request(spec, self.ws_id, fingerprint, self.pool)
            inst = self.client.instances.create(request, wait=True)
        self._write_files(inst, spec)

    def _write_files(self, inst: Any, spec: InstanceSpec) -> None:
        """The per-instance files (hostname, hosts, instance.env), as the lxc backend writes them."""
        with self._api(f"writing the instance files of {spec.name}"):
            for rel, text in instance_files(spec).items():
                inst.files.put("/" + rel, text.encode(), mode=file_mode(rel), uid=0, gid=0)

    def start(self, name: str) -> None:
        inst = self._must(name)
        with self._api(f"starting {name}"):
            inst.start(wait=True)

    def stop(self, name: str, timeout: float = 10.0) -> None:
        inst = self._get(name)
        if inst is None or inst.status != "Running":
            return
        with self._api(f"stopping {name}"):
            try:
                inst.stop(timeout=int(timeout), force=False, wait=True)
            except Exception:
                inst.stop(force=True, wait=True)

    def destroy(self, name: str) -> None:
        inst = self._get(name)
        if inst is None:
            return
        with self._api(f"removing {name}"):
            if inst.status != "Stopped":
                inst.stop(force=True, wait=True)
            inst.delete(wait=True)

    def state(self, name: str) -> str:
        inst = self._get(name)
        if inst is None:
            return "missing"
        return "running" if inst.status == "Running" else "stopped"

    def address(self, name: str) -> str:
        addr = self._must(name).config.get(ADDRESS_KEY)
        if not addr:
            raise BackendError(f"instance {name} has no recorded address")
        return str(addr)

    def _read(self, inst: Any, path: str) -> str | None:
        """A regular file of the instance (LXD reads it inside the container), or None if it has none
        or it is not a regular file. At most READ_LIMIT bytes, with a timeout: the instance controls
        the file, and a FIFO or /dev/zero there must not hang or exhaust sandbox."""
        with self._api(f"reading {path} of {inst.name}"):
            try:
                r = inst.api.files.get(params={"path": path}, is_api=False, stream=True, timeout=30)
            except Exception as e:
                if type(e).__name__ == "NotFound":
                    return None
                raise
            try:
                if r.status_code != 200 or r.headers.get("X-LXD-type", "file") != "file":
                    return None
                data = b""
                for chunk in r.iter_content(1 << 16):
                    data += chunk
                    if len(data) > READ_LIMIT:
                        raise BackendError(
                            f"{path} of {inst.name} is larger than {READ_LIMIT} bytes",
                            hint=f"replace {path} in {inst.name} by a regular file",
                        )
            finally:
                r.close()
        return data.decode(errors="replace")

    def _user_ids(self, inst: Any, user: str) -> tuple[int, int, str]:
        for line in (self._read(inst, "/etc/passwd") or "").splitlines():
            f = line.split(":")
            if f[0] == user and len(f) >= 6:
                return int(f[2]), int(f[3]), f[5]
        raise BackendError(f"user {user!r} does not exist in instance {inst.name}")

    def _exec_env(
        self, inst: Any, user: str | None, env: Mapping[str, str] | None
    ) -> tuple[dict[str, str], int, int]:
        """What the lxc backend gives commands: the app's environment, a clean PATH, HOME, USER;
        and the ids to run them as."""
        uid, gid, home = 0, 0, "/root"
        if user and user != "root":
            uid, gid, home = self._user_ids(inst, user)
        out: dict[str, str] = {}
        for rel in (APP_ENV_FILE, INSTANCE_ENV_FILE):
            out |= parse_env_file(self._read(inst, "/" + rel) or "")
        out |= {"PATH": EXEC_PATH, "LANG": "C.UTF-8", "HOME": home}
        if uid != 0:
            out |= {"USER": str(user), "LOGNAME": str(user)}
        return {**out, **(env or {})}, uid, gid

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
        inst = self._must(name)
        variables, uid, gid = self._exec_env(inst, user, env)
        if interactive:
            variables["TERM"] = os.environ.get("TERM", "xterm")
            cmd = [*self._lxc("exec", name), "--user", str(uid), "--group", str(gid)]
            cmd += ["--cwd", variables["HOME"]] + [
                a for k, v in variables.items() for a in ("--env", f"{k}={v}")
            ]
            return ExecResult(subprocess.call([*cmd, "--", *argv], env=self._lxc_env()), "", "")
        if timeout is not None:  # LXD's exec has no deadline: coreutils' timeout inside gives one
            argv = ["timeout", "-k", "5", str(max(1, int(timeout))), *argv]
        with self._api(f"running a command in {name}"):
            code, out, err = self._run(inst, argv, variables, uid, gid)
        if timeout is not None and code in (124, 137):
            raise BackendError(f"command timed out after {timeout}s in {name}: {shlex.join(argv[4:])}")
        return ExecResult(code, out, err)

    def _run(
        self, inst: Any, argv: list[str], env: dict[str, str], uid: int, gid: int
    ) -> tuple[int, str, str]:
        """LXD exec with recorded output: plain REST calls (pylxd's websocket exec can lose the output
        of a short command), then the two output logs are read and deleted."""
        request = {
            "command": argv,
            "environment": env,
            "wait-for-websocket": False,
            "record-output": True,
            "interactive": False,
            "user": uid,
            "group": gid,
            "cwd": env["HOME"],
        }
        r = inst.api["exec"].post(json=request)
        op = self.client.operations.wait_for_operation(r.json()["operation"])
        texts = {}
        for fd, path in (op.metadata.get("output") or {}).items():
            log = inst.api.logs[str(path).partition("?")[0].rsplit("/", 1)[-1]]
            texts[fd] = log.get(is_api=False).content.decode(errors="replace")
            log.delete()
        return int(op.metadata["return"]), texts.get("1", ""), texts.get("2", "")

    def _lxc(self, command: str, name: str) -> list[str]:
        """The `lxc` client's command line for `name` (on the remote, through sandbox's LXD_CONF)."""
        return ["lxc", command, f"{LXC_REMOTE}:{name}" if self.remote else name]

    def _lxc_env(self) -> dict[str, str] | None:
        return {**os.environ, "LXD_CONF": str(lxc_conf(self.remote, self.project))} if self.remote else None

    def put_file(self, name: str, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        inst = self._must(name)
        tmp = f"{path}.sbxnew"
        parent = os.path.dirname(path) or "/"
        r = self.exec(name, ["mkdir", "-p", parent])
        if r.code != 0:
            raise BackendError(f"cannot write {path} in {name}: {r.stderr.strip()}")
        with self._api(f"writing {path} in {name}"):
            inst.files.put(tmp, data, mode=mode, uid=uid, gid=gid)
        r = self.exec(name, ["mv", "-f", tmp, path])  # atomic: readers never see half a file
        if r.code != 0:
            raise BackendError(f"cannot write {path} in {name}: {r.stderr.strip()}")

    def logs_argv(self, name: str, follow: bool, lines: int) -> list[str]:
        journal = ["journalctl", "--no-pager", "-u", "sandbox-app.service", "-n", str(lines)]
        env = ["env", f"LXD_CONF={lxc_conf(self.remote, self.project)}"] if self.remote else []
        return [*env, *self._lxc("exec", name), "--", *journal, *(["-f"] if follow else [])]

    # -- snapshots and clones ----------------------------------------------
    def snapshot(self, name: str, snap: str) -> dict[str, str]:
        inst = self._must(name)
        with self._api(f"snapshot {snap} of {name}"):
            inst.snapshots.create(snap, stateful=False, wait=True)
        return {"lxd_snapshot": f"{name}/{snap}"}

    def restore(self, name: str, snap: str) -> None:
        inst = self._must(name)
        with self._api(f"restoring {name} to {snap}"):
            inst.restore_snapshot(snap, wait=True)

    def delete_snapshot(self, name: str, snap: str) -> None:
        inst = self._get(name)
        if inst is None:
            return
        with self._api(f"deleting snapshot {snap} of {name}"):
            try:  # by its name: pylxd's names from a listing keep a project's `?project=`
                with warnings.catch_warnings():  # pylxd warns of each field its Snapshot lacks
                    warnings.simplefilter("ignore", UserWarning)
                    found = inst.snapshots.get(snap)
            except Exception as e:
                if type(e).__name__ == "NotFound":
                    return
                raise
            found.delete(wait=True)

    def clone(self, src: str, spec: InstanceSpec) -> None:
        source = self._must(src)
        running = source.status == "Running"
        with self._api(f"copying {src} to {spec.name}"):
            if running:  # a consistent copy: nothing writes while LXD copies
                source.freeze(wait=True)
            try:
                request = copy_request(src, spec, self.ws_id, source.profiles, self.pool)
                inst = self.client.instances.create(request, wait=True)
            finally:
                if running:
                    source.unfreeze(wait=True)
        self._write_files(inst, spec)

    def instances(self) -> list[str]:
        with self._api("listing instances"):
            found = self.client.instances.all(recursion=1)
        return sorted(i.name for i in found if i.config.get(WORKSPACE_KEY) == self.ws_id)

    def image_of(self, name: str) -> str | None:
        inst = self._get(name)
        return None if inst is None else inst.config.get(IMAGE_KEY)
