"""The docker backend: each instance is a container running the recipe's app as its process.

Images go in with `docker load` of the archive sandbox/imageformats/docker.py writes (one docker layer
per sandbox layer, so a new app layer loads in a moment). Containers run the app as its user, with
no-new-privileges and every capability dropped but those the profile keeps, behind docker's tiny init;
there is no systemd, so a recipe's cron jobs and services do not run here, and `up` says so. Instances
sit on one docker network of sandbox's; the router reaches them at their address on it. Every docker SDK
error becomes a BackendError in `_translated`.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from sandbox.backends.base import Backend, BackendError, ExecResult, InstanceSpec
from sandbox.backends.instancefiles import instance_env
from sandbox.events import Event
from sandbox.imageformats.docker import LABEL_DIGEST, app_meta, repo_tag, write_docker_archive
from sandbox.store import ImageStore

LABEL_WS = "io.sandbox.workspace"
LABEL_ENV = "io.sandbox.env"
NETWORK = "sandbox"
SNAP_REPO = "sandbox-snapshot"
CRON_DIR = "/etc/cron.d/"
WANTS_DIR = "/etc/systemd/system/multi-user.target.wants/"
#: what Debian's own packages put there, which nobody expects to run in an app container
PACKAGE_DEFAULTS = {".placeholder", "e2scrub_all", "e2scrub_reap.service", "sandbox-app.service"}


class DockerBackend(Backend):
    name = "docker"
    capabilities = frozenset({"snapshot", "clone", "logs", "remote"})

    #: the docker network the instances sit on (one per engine, shared by workspaces, here)
    network_name = NETWORK

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None
        self._lock = threading.Lock()

    # -- the daemon ----------------------------------------------------------
    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                with self._errors():
                    self._client = self._connect()
            return self._client

    def _connect(self) -> Any:
        if self.remote is None and os.geteuid() == 0:
            # root: this host's engine, not one (or TLS material) that the caller's
            # DOCKER_HOST / DOCKER_CERT_PATH chose; a remote engine is the profile's `remote`
            return docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
        if self.remote is None:
            return docker.from_env(timeout=120)
        return docker.DockerClient(
            base_url=self.remote, use_ssh_client=self.remote.startswith("ssh://"), timeout=120
        )

    def _errors(self) -> Any:
        """The context every SDK call runs in: its errors become BackendErrors naming the engine."""
        return _translated(self.remote)

    def check(self) -> None:
        with self._errors():
            self.client.ping()
        self._network()

    def _network(self) -> Any:

        with self._errors():
            try:
                return self.client.networks.get(self.network_name)
            except docker.errors.NotFound:
                try:
                    return self.client.networks.create(self.network_name, **self._network_args())
                except docker.errors.APIError as e:  # another `up` made it meanwhile
                    if "already exists" not in str(e):
                        raise
                    return self.client.networks.get(self.network_name)

    def _network_args(self) -> dict[str, Any]:
        """How the network is made: docker picks its subnet."""
        return {"driver": "bridge", "labels": {LABEL_WS: "shared"}}

    # -- images --------------------------------------------------------------
    def _loaded(self, digest: str) -> bool:
        """The engine holds `digest` under its tag (its digest label says so)."""
        with self._errors():
            try:
                return bool(
                    self.client.images.get(repo_tag(self.store, digest)).labels.get(LABEL_DIGEST) == digest
                )
            except docker.errors.ImageNotFound:
                return False

    def prepare_image(self, digest: str) -> None:
        store = self.store
        tag = repo_tag(store, digest)
        if self._loaded(digest):
            return
        with self._errors():
            t0 = time.monotonic()
            self.sink(
                Event("progress", phase="up", message=f"loading image {digest[7:19]} into docker (once)")
            )
            r, w = os.pipe()
            writer = threading.Thread(target=_write_archive, args=(store, digest, w), daemon=True)
            writer.start()
            with os.fdopen(r, "rb") as stream:
                self.client.images.load(stream)
            writer.join()
        self.sink(Event("log", phase="up", message=f"loaded in {time.monotonic() - t0:.1f}s as {tag}"))

    def forget_image(self, digest: str) -> None:

        with self._errors(), suppress(docker.errors.NotFound):
            self.client.images.remove(repo_tag(self.store, digest))

    def unsupported(self, digest: str) -> list[str]:
        """What the image has that needs an init (cron jobs, services), so does not run here."""
        files = self.store.manifest(digest).get("files", {})
        found = []
        for path in sorted(files):
            base = path.rsplit("/", 1)[-1]
            if base in PACKAGE_DEFAULTS:
                continue
            if path.startswith(CRON_DIR) and files[path].get("type") == "file":
                found.append(f"cron job {base}")
            elif path.startswith(WANTS_DIR) and base.endswith(".service"):
                found.append(f"service {base.removesuffix('.service')}")
        return found

    # -- instances -------------------------------------------------------------
    def _spec_path(self, name: str) -> Path:
        return self.ctx.runtime / "docker" / f"{name}.json"

    def _create_args(self, spec: InstanceSpec, image: str) -> dict[str, Any]:
        store = self.store
        profile_caps = list(spec.capabilities)
        env = {**(app_meta(store, spec.image).get("env") or {}), **instance_env(spec)}
        args: dict[str, Any] = {
            "image": image,
            "name": spec.name,
            "hostname": spec.name,
            "environment": env,
            "labels": {LABEL_WS: self.ctx.workspace_id, LABEL_ENV: spec.env, LABEL_DIGEST: spec.image},
            "network": self.network_name,
            "init": True,
            "cap_drop": ["ALL"],
            "cap_add": profile_caps or None,
            "security_opt": ["no-new-privileges"],
            "restart_policy": {"Name": "unless-stopped"},
            "mounts": [_mount(m) for m in spec.mounts],
            "log_config": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
        }
        app = app_meta(store, spec.image).get("app") or {}
        if app.get("port"):
            args["ports"] = {f"{app['port']}/tcp": self._publish_at(spec)}
        if spec.memory:
            args["mem_limit"] = spec.memory
        if spec.cpus:
            args["nano_cpus"] = int(spec.cpus * 1e9)
        if spec.pids:
            args["pids_limit"] = spec.pids
        return args

    def _publish_at(self, spec: InstanceSpec) -> tuple[str, int | None]:
        """Where the app's port is published on the engine's machine (here: loopback, any port)."""
        return ("127.0.0.1", None)

    def create(self, spec: InstanceSpec) -> None:
        self.prepare_image(spec.image)
        if spec.index == 0:
            missing = self.unsupported(spec.image)
            if missing:
                self.sink(
                    Event(
                        "warning",
                        phase="up",
                        message="unsupported on the docker backend (no init runs cron or services): "
                        + ", ".join(missing),
                    )
                )
        self._create(spec, repo_tag(self.store, spec.image))

    def _create(self, spec: InstanceSpec, image: str) -> None:

        args = self._create_args(spec, image)
        path = self._spec_path(spec.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(args))
        with self._errors():
            try:
                self.client.containers.create(**args)
            except docker.errors.APIError as e:
                if e.status_code == 409:
                    raise BackendError(
                        f"a docker container named {spec.name} already exists",
                        hint=f"sandbox gc removes leftovers (`docker rm -f {spec.name}` if not sandbox's)",
                    ) from e
                raise

    def _container(self, name: str) -> Any:
        with self._errors():
            return self.client.containers.get(name)

    def start(self, name: str) -> None:
        with self._errors():
            self._container(name).start()

    def stop(self, name: str, timeout: float = 10.0) -> None:
        with self._errors():
            self._container(name).stop(timeout=int(timeout))

    def destroy(self, name: str) -> None:

        with self._errors():
            with suppress(docker.errors.NotFound):
                container = self.client.containers.get(name)
                if container.labels.get(LABEL_WS) != self.ctx.workspace_id:
                    self.sink(
                        Event("warning", message=f"left docker container {name}: sandbox did not create it")
                    )
                    return
                container.remove(force=True)
            for img in self.client.images.list(name=SNAP_REPO):
                for tag in img.tags:
                    if tag.split(":", 1)[1].startswith(f"{name}."):
                        with suppress(docker.errors.NotFound, docker.errors.APIError):
                            self.client.images.remove(tag)
        self._spec_path(name).unlink(missing_ok=True)

    def state(self, name: str) -> str:

        with self._errors():
            try:
                status = self.client.containers.get(name).status
            except docker.errors.NotFound:
                return "missing"
        return "running" if status in ("running", "restarting") else "stopped"

    def address(self, name: str) -> str:
        nets = self._container(name).attrs["NetworkSettings"]["Networks"]
        addr = (nets.get(self.network_name) or {}).get("IPAddress")
        if not addr:
            raise BackendError(
                f"container {name} has no address on docker network {self.network_name!r}",
                hint="is it running?",
            )
        return str(addr)

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
        if interactive:
            cli = ["docker", *self._host_args(), "exec", "-i", *(["-t"] if os.isatty(0) else [])]
            cli += [
                *(["-u", user] if user else ["-u", "root"]),
                *(arg for k, v in (env or {}).items() for arg in ("-e", f"{k}={v}")),
            ]
            return ExecResult(subprocess.call([*cli, name, *argv]), "", "")
        with self._errors():
            code, (out, err) = self._container(name).exec_run(
                argv, user=user or "root", environment=dict(env or {}), demux=True
            )
        return ExecResult(code, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace"))

    def put_file(self, name: str, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        parent, _, base = path.rpartition("/")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            ti = tarfile.TarInfo(base)
            ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = len(data), mode, uid, gid, int(time.time())
            tar.addfile(ti, io.BytesIO(data))
        with self._errors():
            if not self._container(name).put_archive(parent or "/", buf.getvalue()):
                raise BackendError(f"could not write {path} into {name}", hint="does its directory exist?")

    def _host_args(self) -> list[str]:
        return ["-H", self.remote] if self.remote else []

    def logs_argv(self, name: str, follow: bool, lines: int) -> list[str]:
        return ["docker", *self._host_args(), "logs", "--tail", str(lines), *(["-f"] if follow else []), name]

    # -- snapshots and clones: `docker commit` of the container's filesystem ---------------
    def snapshot(self, name: str, snap: str) -> dict[str, str]:
        with self._errors():
            image = self._container(name).commit(repository=SNAP_REPO, tag=f"{name}.{snap}", pause=True)
        return {"image": str(image.id)}

    def restore(self, name: str, snap: str) -> None:
        """Replace the container by one from the snapshot, made first so a failure loses nothing."""

        args = json.loads(self._spec_path(name).read_text())
        args["ports"] = {k: tuple(v) for k, v in (args.get("ports") or {}).items()} or None
        was_running = self.state(name) == "running"
        staged = f"{name}.restoring"
        with self._errors():
            with suppress(docker.errors.NotFound):  # left by a restore that crashed
                self.client.containers.get(staged).remove(force=True)
            image = self.client.images.get(f"{SNAP_REPO}:{name}.{snap}")
            new = self.client.containers.create(**{**args, "image": image.id, "name": staged})
            self._container(name).remove(force=True)
            new.rename(name)
        if was_running:
            self.start(name)

    def delete_snapshot(self, name: str, snap: str) -> None:

        with self._errors(), suppress(docker.errors.ImageNotFound):
            self.client.images.remove(f"{SNAP_REPO}:{name}.{snap}")

    def clone(self, src: str, spec: InstanceSpec) -> None:
        with self._errors():
            image = self._container(src).commit(repository=SNAP_REPO, tag=f"{spec.name}.clone", pause=True)
        self._create(spec, str(image.id))

    def instances(self) -> list[str]:
        with self._errors():
            found = self.client.containers.list(
                all=True, filters={"label": f"{LABEL_WS}={self.ctx.workspace_id}"}
            )
        return sorted(c.name for c in found)


def _write_archive(store: ImageStore, digest: str, fd: int) -> None:
    # BrokenPipeError: docker stopped reading, and its own error is the one reported
    with os.fdopen(fd, "wb") as f, suppress(BrokenPipeError):
        write_docker_archive(store, digest, f)


def _mount(m: Any) -> Any:
    from docker.types import Mount

    return Mount(target=m.dest, source=m.src, type="bind", read_only=m.readonly)


@contextmanager
def _translated(remote: str | None, where: str | None = None, down_hint: str | None = None) -> Iterator[None]:
    """Every docker SDK error becomes a BackendError with the fix (the one place they are mapped);
    `where` names the engine's machine, `down_hint` says what to do when it does not answer."""

    where = where or remote or "this host"
    try:
        yield
    except BackendError:
        raise
    except docker.errors.NotFound as e:
        raise BackendError(f"docker: {e.explanation or e}", hint="sandbox gc removes stale instances") from e
    except docker.errors.APIError as e:
        msg = str(e.explanation or e)
        if e.status_code == 409:
            hint = "the name is taken: sandbox gc removes leftovers"
        elif "permission denied" in msg.lower():
            hint = "run sandbox as root or as a member of the docker group"
        else:
            hint = "see the docker daemon's log"
        raise BackendError(f"docker: {msg}", hint=hint) from e
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:  # incl. timeouts
        msg = str(e)
        if "Permission denied" in msg or "PermissionError" in msg:
            raise BackendError(
                f"permission denied talking to the docker daemon on {where}",
                hint="run sandbox as root or as a member of the docker group",
            ) from e
        why = msg.splitlines()[0][:200] if msg else type(e).__name__
        raise BackendError(
            f"the docker daemon on {where} does not answer ({why})",
            hint=down_hint
            or (
                "start it: scripts/backends.sh docker (or `systemctl start docker`)"
                if remote is None
                else f"check that {remote} is reachable and runs dockerd"
            ),
        ) from e
