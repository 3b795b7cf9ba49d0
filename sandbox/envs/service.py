"""`Envs`: the env service the CLI (and promote, and later the web) talks to.

It composes one collaborator per idea over one shared context (context.py):
lifecycle (up, clone, stop, start, down), instances, routing, health, snapshots, views,
gc and diff. Every public method takes names and plain values and returns rows or views;
nothing here prints.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.backends.base import BackendRegistry, ExecResult
from sandbox.envs.context import AppInfo, EnvContext
from sandbox.envs.health import Health
from sandbox.envs.instances import Instances
from sandbox.envs.lifecycle import Lifecycle
from sandbox.envs.probes import Probe
from sandbox.envs.registry import make_backend_registry
from sandbox.envs.routing import EnvRouting
from sandbox.envs.snapshots import Snapshots
from sandbox.envs.views import EnvView, env_view
from sandbox.errors import SandboxError
from sandbox.events import EventSink, null_sink
from sandbox.routing import RouterDriver, RouterKind
from sandbox.settings import Settings, load_settings
from sandbox.state import Env, Instance, StateDB
from sandbox.store import ImageStore
from sandbox.workspace import Workspace

if TYPE_CHECKING:
    from sandbox.envs.gc import GcReport


class Envs:
    """Environments of one workspace: up / down / stop / start / ls / status / exec / snapshot /
    clone / gc / diff, and the instance and router steps a promotion takes."""

    def __init__(
        self,
        ws: Workspace,
        sink: EventSink = null_sink,
        *,
        settings: Settings | None = None,
        backends: BackendRegistry | None = None,
        router_factory: Callable[[str, RouterKind], RouterDriver] | None = None,
    ) -> None:
        settings = settings or load_settings(ws)
        store = ImageStore(ws.images)
        self.ctx = EnvContext(
            ws=ws,
            sink=sink,
            settings=settings,
            state=StateDB.for_workspace(ws),
            store=store,
            backends=backends or make_backend_registry(ws, settings, sink, store),
            router_factory=router_factory,
        )
        self.instances = Instances(self.ctx)
        self.routing = EnvRouting(self.ctx)
        self.health = Health(self.ctx)
        self.lifecycle = Lifecycle(self.ctx, self.instances, self.routing)
        self.snapshots = Snapshots(self.ctx, self.routing)

    # -- what the context holds ---------------------------------------------------
    @property
    def ws(self) -> Workspace:
        return self.ctx.ws

    @property
    def sink(self) -> EventSink:
        return self.ctx.sink

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def state(self) -> StateDB:
        return self.ctx.state

    @property
    def store(self) -> ImageStore:
        return self.ctx.store

    def get(self, name: str) -> Env:
        return self.ctx.state.get_env(name)

    def app(self, digest: str) -> AppInfo:
        """The app an image runs (port, health path, user, smoke and migrate commands)."""
        return self.ctx.app(digest)

    def events(self, name: str, limit: int = 10) -> list[dict[str, Any]]:
        return self.ctx.state.events(name, limit=limit)

    # -- lifecycle ----------------------------------------------------------------
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
        env = self.lifecycle.up(name, image=image, ttl=ttl, owner=owner)
        if wait:
            self.health.wait_healthy(env, timeout)
        return self.view(name, live=False)  # the instances were just started: the rows say so

    def clone(self, src: str, dst: str, *, owner: str | None = None, wait: bool = False) -> EnvView:
        env = self.lifecycle.clone(src, dst, owner=owner)
        if wait:
            self.health.wait_healthy(env)
        return self.view(dst, live=False)

    def down(self, name: str) -> None:
        self.lifecycle.down(name)

    def teardown(self, name: str) -> None:
        self.lifecycle.teardown(name)

    def stop(self, name: str) -> EnvView:
        self.lifecycle.stop(name)
        return self.view(name)

    def start(self, name: str, wait: bool = False, timeout: float | None = None) -> EnvView:
        env = self.lifecycle.start(name)
        if wait:
            self.health.wait_healthy(env, timeout)
        return self.view(name)

    def snapshot(self, name: str, snap: str | None = None) -> str:
        return self.snapshots.snapshot(name, snap)

    def restore(self, name: str, snap: str) -> EnvView:
        self.snapshots.restore(name, snap)
        return self.view(name)

    # -- views --------------------------------------------------------------------
    def view(self, name: str, live: bool = True) -> EnvView:
        return env_view(self.ctx, self.ctx.state.get_env(name), live)

    def ls(self, owner: str | None = None) -> list[EnvView]:
        return [env_view(self.ctx, e, live=True) for e in self.ctx.state.list_envs(owner)]

    def gc(self, *, images: bool = False, now: float | None = None) -> GcReport:
        """Remove expired envs, envs a crash left half-made, and orphans no env owns (here and on the
        production hosts of the workspace's envs and profiles)."""
        from sandbox.envs.gc import collect

        return collect(self.ctx, self.lifecycle, self.routing, images=images, now=now)

    def diff(self, a: str, b: str) -> dict[str, Any]:
        """Image and configuration differences between two envs (staging vs prod drift)."""
        from sandbox.envs.diff import diff_envs

        return diff_envs(self.ctx, a, b)

    # -- health -------------------------------------------------------------------
    def probe(self, name: str) -> dict[str, Probe]:
        return self.health.probe(self.get(name))

    def wait_healthy(self, name: str, timeout: float | None = None) -> dict[str, Probe]:
        return self.health.wait_healthy(self.get(name), timeout)

    def probe_instance(self, name: str, inst: Instance, image: str | None = None) -> Probe:
        return self.health.probe_instance(self.get(name), inst, image)

    # -- inside instances ---------------------------------------------------------
    def exec(
        self, name: str, argv: list[str], index: int = 0, user: str | None = None, attach: bool = False
    ) -> ExecResult:
        """Run argv in instance `index`; with `attach` the terminal is the command's (output not captured)."""
        return self.instances.exec(name, argv, index, user, attach)

    def put_file(self, name: str, index: int, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        """Write one file into a running instance (static file sync)."""
        backend, iname = self.instances.pick(name, index)
        backend.put_file(iname, path, data, mode, uid, gid)

    def logs_argv(self, name: str, index: int, follow: bool, lines: int) -> list[str]:
        backend, iname = self.instances.pick(name, index)
        return backend.logs_argv(iname, follow, lines)

    def new_instance(self, name: str, image: str, host: str | None = None) -> Instance:
        """One more instance of env `name` running `image` (on `host`), started but not yet routed."""
        return self.instances.add(self.get(name), image, host)

    # -- production hosts -------------------------------------------------------------
    def placement(self, name: str) -> list[str | None]:
        """The host of each instance index of env `name` by its profile (None: this machine)."""
        return self.instances.placement(self.get(name))

    def hosts_ready(self, name: str, image: str) -> None:
        """For an env on hosts: every host reachable and holding `image`, verified (else nothing)."""
        env = self.get(name)
        if env.spec.hosts:  # the hosts of its placement (not those forgotten with `host drain`)
            hosts = list(dict.fromkeys(h for h in self.instances.placement(env) if h))
            self.ctx.hosts.ready(env.spec, image, hosts)

    def router_lock(self, name: str, take: bool) -> None:
        """Take (or release) env `name`'s deploy lock on its router host, when its router runs on
        another machine: a second control machine is refused while one promotes. No-op otherwise."""
        env = self.get(name)
        if env.spec.router is None or env.spec.router.host is None:
            return
        router = self.ctx.hosts.router(env.spec, name)
        if take:
            router.lock(control_id(self.ws), True)
        else:
            with contextlib.suppress(
                SandboxError
            ):  # a router host that died keeps it; same holder may retake
                router.lock(control_id(self.ws), False)

    def unroute_host(self, name: str, host: str) -> list[Instance]:
        """Take every instance of env `name` on `host` out of the router (a host that died)."""
        hit = [i for i in self.state.instances(name) if i.host == host and i.routed]
        for inst in hit:
            self.state.set_instance(name, inst.idx, routed=False)
        if hit:
            self.routing.reroute(name)
            # requests in flight to the dead host fail now, not after nginx's read timeout: the
            # idempotent ones are retried on the instances that answer
            ends = [e for e in (i.upstream(self.app(self.get(name).image).port) for i in hit) if e]
            with contextlib.suppress(SandboxError):
                self.routing.driver(name).abort(ends)
        return hit

    def drain_host(self, name: str, host: str) -> list[str]:
        """Forget a host that will not come back: its instances leave the router and the state (the
        host itself is not contacted). Returns the instances forgotten."""
        env = self.get(name)
        self.ctx.hosts.spec(env.spec, host)
        gone = [i for i in self.state.instances(name) if i.host == host]
        drained = sorted({*env.config.get("drained_hosts", []), host})
        self.state.set_env(name, config={**env.config, "drained_hosts": drained})
        self.unroute_host(name, host)
        for inst in gone:
            self.state.delete_instance(name, inst.idx)
        self.state.event("host-drain", f"drained host {host}: forgot {len(gone)} instances", env=name)
        return [i.name for i in gone]

    def remove_instance(self, name: str, inst: Instance) -> None:
        self.instances.remove(self.get(name), inst)

    # -- the router -----------------------------------------------------------------
    def router(self, name: str) -> RouterDriver:
        return self.routing.driver(name)

    def reroute(self, name: str) -> None:
        self.routing.reroute(name)

    def drain(self, name: str, inst: Instance, timeout: float) -> bool:
        """Wait until the unrouted `inst` has no request in flight at the router; False on timeout."""
        return self.routing.drain(name, inst, timeout)

    def set_maintenance(self, name: str, allow: Sequence[str] | None) -> None:
        """The maintenance page for everyone but `allow`, or (None) off."""
        self.routing.set_maintenance(name, allow)

    def set_readonly(self, name: str, on: bool) -> None:
        """Read-only mode: the flag file the app sees in every instance, and 503 for writes at the router."""
        self.instances.set_readonly_flag(self.get(name), on)
        self.routing.set_readonly(name, on)


def control_id(ws: Workspace) -> str:
    """Who holds a deploy lock on a router host: this machine (host name, machine id) and workspace."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()[:12]
    except OSError:
        machine = "-"
    return f"{socket.gethostname()}/{machine}/{ws.id}"
