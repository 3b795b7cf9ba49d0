"""Environments: up / down / stop / start / ls / status / exec / snapshot / clone / gc / diff.

An env is a profile's instances of one image on one backend, plus its own
router. Its name is PROFILE or PROFILE-SUFFIX. All bookkeeping lives in the
state DB; every step that creates something is recorded first, so a crash
at any point leaves rows that `ls` shows and `gc` cleans.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sandbox.backends.base import Backend, ExecResult, InstanceSpec, MountSpec, get_backend
from sandbox.backends.hostsetup import gateway
from sandbox.build.fingerprint import current_image
from sandbox.build.formats import APP_FORMAT, BASE_FORMAT
from sandbox.config.names import env_profile_name
from sandbox.config.profile_cache import ProfileData, recall, remember
from sandbox.errors import SandboxError
from sandbox.events import Event, EventSink, null_sink
from sandbox.fsutil import pid_alive
from sandbox.health import Probe, http_probe, probe_instance, wait_until
from sandbox.promote.router import PortForward, Router, RouterConfig, port_in_use
from sandbox.promote.sysrouter import SystemRouter, router_for, router_kind
from sandbox.settings import Settings, load_settings
from sandbox.state import Env, Instance, StateDB
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


class Envs:
    def __init__(self, ws: Workspace, sink: EventSink = null_sink) -> None:
        self.ws = ws
        self.sink = sink
        self.settings = load_settings(ws)
        self.state = StateDB.for_workspace(ws)
        self.store = ImageStore(ws.images)
        self.routers = ws.runtime / "routers"

    # -- helpers -----------------------------------------------------------
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

    def _backend(self, name: str, remote: str | None = None) -> Backend:
        return get_backend(name, self.ws, self.sink, remote)

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

    # -- up / down ---------------------------------------------------------
    def up(
        self,
        name: str,
        *,
        image: str | None = None,
        ttl: str | None = None,
        owner: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> EnvView:
        p = self._profile(name)
        ttl_s = _ttl(ttl) if ttl is not None else p.data.get("ttl")
        backend = self._backend(p.data["backend"], p.data.get("remote"))
        backend.check()
        digest = self._image(p, image)
        now = time.time()
        config = {"profile": p.data, "profile_digest": p.digest, "sources": p.sources}
        env = self.state.claim_env(
            name,
            profile=p.name,
            image=digest,
            backend=p.data["backend"],
            owner=owner or default_owner(self.settings),
            config=config,
            expires=now + ttl_s if ttl_s else None,
            pid=os.getpid(),
            max_per_owner=p.data.get("max_per_owner"),
        )
        self.state.event("up", f"up {name} with {digest[:19]}", env=name)
        try:
            backend.prepare_image(digest)
            self._create_instances(env, backend)
            url = self._route(env)
            self.state.set_env(name, state="running", url=url, pid=None)
        except BaseException as e:
            self.sink(Event("warning", phase="up", message=f"up {name} failed; removing what was created"))
            self.teardown(name, backend)
            self.state.event("up-failed", str(e), env=name)
            raise
        if wait:
            self.wait_healthy(name, timeout)
        return self.view(name)

    def _create_instances(self, env: Env, backend: Backend, clone_from: str | None = None) -> None:
        gw, _ = gateway(self.settings.network.subnet)
        count = int(env.config["profile"].get("instances", 1))
        for idx in range(count):
            iname = f"{env.name}-{idx}"
            self.state.add_instance(env.name, idx, iname, "creating")
            addr = self.state.allocate_address(env.name, idx, self.settings.network.subnet, reserved={gw})
            spec = self._spec(env, idx, addr)
            self._emit(f"creating {iname} at {addr}")
            if clone_from is not None:
                sources = self.state.instances(clone_from)
                backend.clone(sources[min(idx, len(sources) - 1)].name, spec)
            else:
                backend.create(spec)
            backend.start(iname)
            self.state.set_instance(
                env.name, idx, state="running", image=env.image, routed=True, **_picked(backend, iname)
            )

    def new_instance(self, name: str, image: str) -> Instance:
        """One more instance of env `name` running `image`, started but not yet routed."""
        env = self.state.get_env(name)
        backend = self._env_backend(env)
        gw, _ = gateway(self.settings.network.subnet)
        idx = max((i.idx for i in self.state.instances(name)), default=-1) + 1
        iname = f"{name}-{idx}"
        # one transaction: a crash can never leave a row that looks like a routed old instance
        self.state.add_instance(name, idx, iname, "creating", image=image, routed=False)
        addr = self.state.allocate_address(name, idx, self.settings.network.subnet, reserved={gw})
        backend.prepare_image(image)
        spec = self._spec(env, idx, addr)
        backend.create(dataclasses.replace(spec, image=image))
        backend.start(iname)
        self.state.set_instance(name, idx, **_picked(backend, iname))
        if (env.config.get("router_mode") or {}).get("readonly"):
            # the app must see read-only mode from its first request on
            backend.exec(iname, ["/bin/sh", "-c", "mkdir -p /run/sandbox && touch /run/sandbox/readonly"])
        return self.state.set_instance(name, idx, state="running")

    def remove_instance(self, name: str, inst: Instance) -> None:
        env = self.state.get_env(name)
        self._env_backend(env).destroy(inst.name)
        self.state.delete_instance(name, inst.idx)

    def probe_instance(self, name: str, inst: Instance, image: str | None = None) -> Probe:
        env = self.state.get_env(name)
        health = env.config["profile"].get("health") or {}
        app = self._app(image or inst.image or env.image) or {}
        path = health.get("path") or app.get("health")
        return probe_instance(self._env_backend(env), inst.name, app.get("port"), path, health.get("command"))

    def _count(self, env: str) -> int:
        return len(self.state.instances(env))

    def _route(self, env: Env) -> str:
        p = env.config["profile"]
        r = p.get("router")
        app = self._app(env.image) or {}
        instances = self.state.instances(env.name)
        if not r:
            if p.get("ports"):
                raise SandboxError(
                    "the profile's ports are forwarded by the env's router",
                    hint="give the profile a router: section",
                )
            first = instances[0].address if instances else None
            return f"http://{first}:{app.get('port', 80)}/" if first else ""
        if app.get("port") is None:
            raise SandboxError(
                f"image {env.image[:19]} has no app: the router has nothing to route to",
                hint="add an app: section to the recipe, or remove router: from the profile",
            )
        if "router_nginx" not in env.config:  # own or system nginx: chosen once, kept for the env's life
            env = self.state.set_env(env.name, config={**env.config, "router_nginx": self._router_kind()})
        if r.get("port") == "auto":
            lo, hi = self.settings.routers.port_range
            port = self.state.claim_router_port(env.name, lo, hi, lambda x: port_in_use(x, r["listen"]))
        else:
            port = int(r["port"])
            self.state.set_env(env.name, router_port=port)
        self.reroute(env.name)
        return f"http://{r['listen']}:{port}/"

    def _router_kind(self) -> str:
        return router_kind(self.settings.routers)

    def router(self, name: str) -> Router | SystemRouter:
        """The env's router: an nginx of its own, or include files in the system nginx."""
        try:
            kind = self.state.get_env(name).config.get("router_nginx") or self._router_kind()
        except SandboxError:  # no such env (an orphaned router dir): what the settings say
            kind = self._router_kind()
        return router_for(self.settings.routers, self.routers, name, str(kind), str(self.ws.root))

    def router_mode(self, name: str) -> dict[str, Any]:
        mode: dict[str, Any] = self.state.get_env(name).config.get("router_mode") or {}
        return mode

    def set_router_mode(self, name: str, **changes: Any) -> None:
        """Maintenance/read-only flags of the router, kept in the env's config, then applied."""
        env = self.state.get_env(name)
        mode = {**(env.config.get("router_mode") or {}), **changes}
        self.state.set_env(name, config={**env.config, "router_mode": mode})
        self.reroute(name)

    def reroute(self, name: str) -> None:
        """Render the env's router from the state (routed instances, mode), check it and reload."""
        env = self.state.get_env(name)
        r = env.config["profile"].get("router")
        if not r or env.router_port is None:
            return
        app = self._app(env.image) or {}
        mode = env.config.get("router_mode") or {}
        backends = tuple(
            f"{i.address}:{app['port']}" for i in self.state.instances(name) if i.address and i.routed
        )
        maintenance = mode.get("maintenance")
        routed = [i for i in self.state.instances(name) if i.address and i.routed]
        ports = tuple(
            PortForward(
                p["address"],
                int(p["host"]),
                p.get("proto", "tcp"),
                tuple(f"{i.address}:{p['container']}" for i in routed),
            )
            for p in env.config["profile"].get("ports") or []
        )
        self.router(name).apply(
            RouterConfig(
                name,
                r["listen"],
                int(env.router_port),
                r["server_name"],
                backends,
                drain_timeout=float(r.get("drain_timeout", 30)),
                maintenance=tuple(maintenance) if maintenance is not None else None,
                readonly=bool(mode.get("readonly")),
                ports=ports,
            )
        )

    def teardown(self, name: str, backend: Backend | None = None) -> None:
        try:
            env = self.state.get_env(name)
        except SandboxError:
            env = None
        if env is not None:
            self.state.set_env(name, state="deleting", pid=os.getpid())
            backend = backend or self._env_backend(env)
        self.router(name).remove()
        if backend is not None:
            for inst in self.state.instances(name):
                backend.destroy(inst.name)
            if env is not None:
                for idx in range(int(env.config["profile"].get("instances", 1))):
                    backend.destroy(f"{name}-{idx}")
        self.state.delete_env(name)

    def down(self, name: str) -> None:
        self.state.get_env(name)
        self.teardown(name)
        self.state.event("down", f"down {name}", env=name)

    def stop(self, name: str) -> EnvView:
        env = self.state.get_env(name)
        backend = self._env_backend(env)
        for inst in self.state.instances(name):
            backend.stop(inst.name)
            self.state.set_instance(name, inst.idx, state="stopped")
        self.router(name).stop()
        self.state.set_env(name, state="stopped", health="unknown")
        return self.view(name)

    def start(self, name: str, wait: bool = False, timeout: float | None = None) -> EnvView:
        env = self.state.get_env(name)
        backend = self._env_backend(env)
        backend.check()
        for inst in self.state.instances(name):
            if backend.state(inst.name) != "running":
                backend.start(inst.name)
            self.state.set_instance(name, inst.idx, state="running", **_picked(backend, inst.name))
        url = self._route(env)
        self.state.set_env(name, state="running", url=url)
        if wait:
            self.wait_healthy(name, timeout)
        return self.view(name)

    # -- health ------------------------------------------------------------
    def probe(self, name: str) -> dict[str, Probe]:
        env = self.state.get_env(name)
        backend = self._env_backend(env)
        p = env.config["profile"]
        health = p.get("health") or {}
        app = self._app(env.image) or {}
        path = health.get("path") or app.get("health")
        return {
            i.name: probe_instance(backend, i.name, app.get("port"), path, health.get("command"))
            for i in self.state.instances(name)
        }

    def wait_healthy(self, name: str, timeout: float | None = None) -> dict[str, Probe]:
        env = self.state.get_env(name)
        health = env.config["profile"].get("health") or {}
        limit = timeout if timeout is not None else float(health.get("timeout", 120))
        interval = float(health.get("interval", 0.5))
        self.sink(Event("phase-start", phase="health", message=f"waiting for {name} to be healthy"))
        t0 = time.monotonic()

        def all_ok() -> Probe:
            probes = self.probe(name)
            bad = [f"{n}: {p.detail}" for n, p in probes.items() if not p.ok]
            return Probe(not bad, "; ".join(bad) or "all instances healthy")

        result, took = wait_until(all_ok, limit, interval)
        if result.ok and env.url and (env.config["profile"].get("router")):
            app = self._app(env.image) or {}
            path = health.get("path") or app.get("health") or "/"
            url = env.url.rstrip("/") + path
            result, _ = wait_until(lambda: _router_probe(url), max(1.0, limit - took), interval)
        self.state.set_env(name, health="healthy" if result.ok else "unhealthy")
        self.sink(
            Event(
                "phase-end",
                phase="health",
                message=result.detail,
                data={"seconds": round(time.monotonic() - t0, 3)},
            )
        )
        if not result.ok:
            raise HealthTimeout(
                f"{name} is not healthy after {limit:.0f}s: {result.detail}",
                hint=f"see `sandbox logs {name}` and `sandbox status {name}`",
            )
        return self.probe(name)

    # -- views -------------------------------------------------------------
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

    # -- inside instances --------------------------------------------------
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

    # -- snapshots and clones ----------------------------------------------
    def snapshot(self, name: str, snap: str | None = None) -> str:
        env = self.state.get_env(name)
        backend = self._env_backend(env)
        backend.require("snapshot")
        snap = snap or time.strftime("snap-%Y%m%d-%H%M%S")
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", snap) or ".." in snap:
            raise SandboxError(
                f"invalid snapshot name {snap!r}",
                hint="lowercase letters, digits, '.', '_' and '-', e.g. before-upgrade",
            )
        if any(s.name == snap for s in self.state.snapshots(name)):
            raise SandboxError(
                f"{name} already has a snapshot {snap!r}",
                hint=f"pick another name, or `sandbox restore {name} {snap}`",
            )
        done = []
        try:
            for inst in self.state.instances(name):
                backend.snapshot(inst.name, snap)
                done.append(inst.name)
            self.state.add_snapshot(name, snap, {"image": env.image, "instances": done})
        except BaseException:
            for iname in done:
                backend.delete_snapshot(iname, snap)
            raise
        self.state.event("snapshot", f"snapshot {snap}", env=name)
        return snap

    def restore(self, name: str, snap: str) -> EnvView:
        env = self.state.get_env(name)
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", snap) or ".." in snap:
            raise SandboxError(f"invalid snapshot name {snap!r}", hint=f"see `sandbox status {name}`")
        self.state.get_snapshot(name, snap)
        backend = self._env_backend(env)
        for inst in self.state.instances(name):
            backend.restore(inst.name, snap)
            if backend.state(inst.name) == "running":  # a re-made container may have a new address
                self.state.set_instance(name, inst.idx, **_picked(backend, inst.name))
        self.reroute(name)
        self.state.event("restore", f"restore {snap}", env=name)
        return self.view(name)

    def clone(self, src: str, dst: str, *, owner: str | None = None, wait: bool = False) -> EnvView:
        source = self.state.get_env(src)
        p = self._profile(dst)
        backend = self._env_backend(source)
        backend.require("clone")
        backend.check()
        ttl = p.data.get("ttl")
        config = {**source.config, "profile": {**p.data, "instances": self._count(src)}, "cloned_from": src}
        env = self.state.claim_env(
            dst,
            profile=p.name,
            image=source.image,
            backend=source.backend,
            owner=owner or default_owner(self.settings),
            config=config,
            expires=time.time() + ttl if ttl else None,
            pid=os.getpid(),
            max_per_owner=p.data.get("max_per_owner"),
        )
        try:
            self._create_instances(env, backend, clone_from=src)
            self.state.set_env(dst, state="running", url=self._route(env), pid=None)
        except BaseException:
            self.teardown(dst, backend)
            raise
        self.state.event("clone", f"clone of {src}", env=dst)
        if wait:
            self.wait_healthy(dst)
        return self.view(dst)


def _router_probe(url: str) -> Probe:
    u = urlsplit(url)
    p = http_probe(u.hostname or "127.0.0.1", u.port or 80, u.path or "/")
    return Probe(p.ok, "router: " + p.detail)


def _ttl(text: str) -> float:
    from sandbox.config.units import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise SandboxError(f"--ttl {text!r}: {e}", hint="e.g. --ttl 90m, --ttl 4h, --ttl 7d") from e
    if seconds <= 0:
        raise SandboxError(f"--ttl {text!r} must be longer than zero", hint="e.g. --ttl 90m, --ttl 4h")
    return seconds


def _picked(backend: Backend, iname: str) -> dict[str, str]:
    """The address a backend chose itself (one without "static-address"), to record after start."""
    return {} if "static-address" in backend.capabilities else {"address": backend.address(iname)}
