"""The core of `Envs`: its state, profiles, backends and images, the views `ls`/`status` show, and
commands inside instances. envrouting.py adds the router, envs.py the lifecycle (up, down,
start/stop, health, snapshots, clones).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

from sandbox.backendctx import make_backend_registry
from sandbox.backends.base import Backend, BackendRegistry, ExecResult, InstanceSpec, MountSpec
from sandbox.build.fingerprint import current_image
from sandbox.build.formats import APP_FORMAT, BASE_FORMAT
from sandbox.config.names import env_profile_name
from sandbox.config.profile_cache import ProfileData, recall, remember
from sandbox.errors import SandboxError
from sandbox.events import Event, EventSink, null_sink
from sandbox.fsutil import pid_alive
from sandbox.settings import Settings, load_settings
from sandbox.state import Env, StateDB
from sandbox.store import ImageStore
from sandbox.workspace import Workspace


class HealthTimeout(SandboxError):
    """An env did not become healthy in time."""


@dataclass
class EnvView:
    """What `ls`/`status` show of an env."""

    name: str
    profile: str
    image: str
    backend: str
    owner: str
    state: str
    health: str
    created: float
    expires: float | None
    url: str | None
    instances: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_owner(settings: Settings) -> str:
    return settings.owner or os.environ.get("SUDO_USER") or os.environ.get("USER") or "root"


class EnvsCore:
    def __init__(self, ws: Workspace, sink: EventSink = null_sink) -> None:
        self.ws = ws
        self.sink = sink
        self.settings = load_settings(ws)
        self.state = StateDB.for_workspace(ws)
        self.store = ImageStore(ws.images)
        self.routers = ws.runtime / "routers"

    def _profile(self, env_name: str) -> ProfileData:
        """The env's merged profile: from the cache while profiles/ is unchanged, else loaded and checked."""
        try:
            name = env_profile_name(env_name)
        except ValueError as e:
            raise SandboxError(str(e), hint="e.g. staging-42, dev-alice, prod") from e
        cached = recall(self.ws.state, self.ws.profiles, name)
        if cached is not None:
            return cached
        from sandbox.config.profile_loader import load_profile_by_name  # YAML + pydantic: only on a miss

        lp = load_profile_by_name(self.ws.profiles, name, display_root=self.ws.root)
        data = ProfileData(
            lp.profile.name, lp.profile.model_dump(mode="json"), lp.digest(), [str(s) for s in lp.sources]
        )
        remember(self.ws.state, self.ws.profiles, data)
        return data

    @functools.cached_property
    def backends(self) -> BackendRegistry:
        """The workspace's backends, made on first use with its context."""
        return make_backend_registry(self.ws, self.settings, self.sink)

    def _backend(self, name: str, remote: str | None = None) -> Backend:
        return self.backends.get(name, remote)

    def _env_backend(self, env: Env) -> Backend:
        """The backend an env runs on (with the profile's `remote:` it was created with)."""
        return self._backend(env.backend, env.config.get("profile", {}).get("remote"))

    def _image(self, p: ProfileData, override: str | None) -> str:
        ref = override or p.data.get("image")
        if ref is not None:
            return self.store.resolve(str(ref))
        recipe = str(p.data["recipe"])
        quick = current_image(self.ws, recipe, (BASE_FORMAT, APP_FORMAT))
        if quick is not None:
            return quick
        from sandbox.build.builder import Builder  # only when a build may be needed

        return Builder(self.ws, self.sink).build(recipe).digest

    def _app(self, digest: str) -> dict[str, Any] | None:
        app: dict[str, Any] | None = self.store.summary(digest).get("app")
        return app

    def _spec(self, env: Env, idx: int, address: str) -> InstanceSpec:
        p = env.config["profile"]
        res = p.get("resources") or {}
        mounts = tuple(
            MountSpec(src=str(src), dest=m["dest"], readonly=bool(m.get("readonly")), is_file=src.is_file())
            for m in p.get("mounts") or []
            for src in [(self.ws.root / m["src"]).resolve()]
        )
        return InstanceSpec(
            name=f"{env.name}-{idx}",
            env=env.name,
            index=idx,
            image=env.image,
            address=address,
            env_vars={str(k): str(v) for k, v in (p.get("env") or {}).items()},
            cpus=res.get("cpus"),
            memory=res.get("memory"),
            pids=res.get("pids"),
            mounts=mounts,
            capabilities=tuple(p.get("capabilities") or ()),
        )

    def _emit(self, message: str, **data: Any) -> None:
        self.sink(Event("progress", phase="up", message=message, data=data))

    def view(self, name: str, live: bool = True) -> EnvView:
        env = self.state.get_env(name)
        return self._view(env, live)

    def _view(self, env: Env, live: bool) -> EnvView:
        insts = self.state.instances(env.name)
        states = []
        backend = self._env_backend(env) if live else None
        for i in insts:
            st = backend.state(i.name) if backend else i.state
            states.append({"name": i.name, "address": i.address, "state": st})
        state = env.state
        if env.state in ("creating", "deleting") and (env.pid is None or not pid_alive(env.pid)):
            state = f"crashed during {'up' if env.state == 'creating' else 'down'}"
        elif env.expired():
            state = "expired"
        elif live and env.state == "running" and states:
            running = sum(1 for s in states if s["state"] == "running")
            state = "running" if running == len(states) else ("stopped" if running == 0 else "degraded")
        return EnvView(
            name=env.name,
            profile=env.profile,
            image=env.image,
            backend=env.backend,
            owner=env.owner,
            state=state,
            health=env.health,
            created=env.created,
            expires=env.expires,
            url=env.url,
            instances=states,
            error=env.error,
        )

    def ls(self, owner: str | None = None) -> list[EnvView]:
        return [self._view(e, live=True) for e in self.state.list_envs(owner)]

    def _instance(self, name: str, index: int) -> tuple[Backend, str]:
        env = self.state.get_env(name)
        insts = self.state.instances(name)
        if not 0 <= index < len(insts):
            raise SandboxError(
                f"{name} has no instance {index}",
                hint=f"{name} has instances 0..{len(insts) - 1}" if insts else None,
            )
        return self._env_backend(env), insts[index].name

    def exec(
        self, name: str, argv: list[str], index: int = 0, user: str | None = None, attach: bool = False
    ) -> ExecResult:
        """Run argv in instance `index`; with `attach` the terminal is the command's (output not captured)."""
        backend, iname = self._instance(name, index)
        return backend.exec(iname, argv, user=user, interactive=attach)

    def put_file(self, name: str, index: int, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        """Write one file into a running instance (static file sync)."""
        backend, iname = self._instance(name, index)
        backend.put_file(iname, path, data, mode, uid, gid)

    def logs_argv(self, name: str, index: int, follow: bool, lines: int) -> list[str]:
        backend, iname = self._instance(name, index)
        return backend.logs_argv(iname, follow, lines)


def picked_address(backend: Backend, iname: str) -> dict[str, str]:
    """The address a backend chose itself (one without "static-address"), to record after start."""
    return {} if "static-address" in backend.capabilities else {"address": backend.address(iname)}
