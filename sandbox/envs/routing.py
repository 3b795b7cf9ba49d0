"""An env's router: its config rendered from the state (routed instances, mode), applied through
the env's RouterDriver; the router's kind (own or system nginx) is chosen once and kept."""

from __future__ import annotations

from collections.abc import Sequence

from sandbox.envs.context import EnvContext
from sandbox.errors import SandboxError
from sandbox.routing import (
    PortForward,
    RouterConfig,
    RouterDriver,
    RouterKind,
    port_in_use,
    router_for,
    router_kind,
)
from sandbox.state import Env, Instance


class EnvRouting:
    def __init__(self, ctx: EnvContext) -> None:
        self.ctx = ctx

    def route(self, env: Env) -> str:
        """Give a new (or restarted) env its router and port; returns the env's URL."""
        r = env.spec.router
        app = self.ctx.app(env.image)
        if r is None:
            if env.spec.ports:
                raise SandboxError(
                    "the profile's ports are forwarded by the env's router",
                    hint="give the profile a router: section",
                )
            instances = self.ctx.state.instances(env.name)
            first = instances[0].upstream(app.port or 80) if instances else None
            return f"http://{first}/" if first else ""
        if app.port is None:
            raise SandboxError(
                f"image {env.image[:19]} has no app: the router has nothing to route to",
                hint="add an app: section to the recipe, or remove router: from the profile",
            )
        if env.router_kind is None:  # own or system nginx: chosen once, kept for the env's life
            self.ctx.state.set_env(env.name, router_kind="own" if r.host else self.default_kind())
        address = r.listen
        if r.host is not None:  # nginx on the router host: the URL is that host's
            address = self._remote_address(env, r.listen)
        if r.port == "auto":
            lo, hi = self.ctx.settings.routers.port_range
            in_use = (lambda x: False) if r.host else (lambda x: port_in_use(x, r.listen))
            port = self.ctx.state.claim_router_port(env.name, lo, hi, in_use)
        else:
            port = self.ctx.state.claim_fixed_router_port(env.name, r.port)
        self.reroute(env.name)
        return f"http://{address}:{port}/"

    def _remote_address(self, env: Env, listen: str) -> str:
        r = env.spec.router
        assert r is not None and r.host is not None
        if listen.startswith("127."):
            raise SandboxError(
                f"the router of {env.name} runs on {r.host} but listens on {listen}: only {r.host} "
                "itself could reach it",
                hint="give router: a listen: of 0.0.0.0 or the router host's address",
            )
        return self.ctx.hosts.router_address(env.spec) if listen == "0.0.0.0" else listen

    def default_kind(self) -> RouterKind:
        return router_kind(self.ctx.settings.routers)

    def driver(self, name: str, env: Env | None = None) -> RouterDriver:
        """The env's router driver: an nginx of its own, or include files in the system nginx."""
        if env is None:
            try:
                env = self.ctx.state.get_env(name)
            except SandboxError:  # no such env (an orphaned router dir): what the settings say
                env = None
        kind: RouterKind = (
            "system" if ((env and env.router_kind) or self.default_kind()) == "system" else "own"
        )
        if self.ctx.router_factory is not None:
            return self.ctx.router_factory(name, kind)
        if env is not None and env.spec.router is not None and env.spec.router.host is not None:
            return self.ctx.hosts.router(env.spec, name)
        return router_for(self.ctx.settings.routers, self.ctx.routers, name, kind, str(self.ctx.ws.root))

    def set_maintenance(self, name: str, allow: Sequence[str] | None) -> None:
        """The maintenance page on (`allow`: the addresses that still get through) or off (None)."""
        self.ctx.state.set_env(name, maintenance=None if allow is None else tuple(allow))
        self.reroute(name)

    def set_readonly(self, name: str, on: bool) -> None:
        """Writes answered with 503 + Retry-After by the router, or not."""
        self.ctx.state.set_env(name, readonly=on)
        self.reroute(name)

    def drain(self, name: str, inst: Instance, timeout: float) -> bool:
        """Wait until the (unrouted) instance `inst` has no request in flight at the env's router."""
        env = self.ctx.state.get_env(name)
        if env.spec.router is None or env.router_port is None:
            return True
        # the same ADDR:PORT that reroute gave the balancer
        backend = inst.upstream(self.ctx.app(env.image).port)
        return self.driver(name, env).drain(timeout, backend)

    def reroute(self, name: str) -> None:
        """Render the env's router from the state (routed instances, mode) and apply it (a reload only
        when more than the backends and the mode changed)."""
        env = self.ctx.state.get_env(name)
        r = env.spec.router
        if r is None or env.router_port is None:
            return
        port = self.ctx.app(env.image).port
        routed = [i for i in self.ctx.state.instances(name) if i.routed and i.upstream(port)]
        ports = tuple(
            PortForward(p.address, p.host, p.proto, tuple(f"{i.address}:{p.container}" for i in routed))
            for p in env.spec.ports
        )
        self.driver(name, env).apply(
            RouterConfig(
                name,
                r.listen,
                int(env.router_port),
                r.server_name,
                tuple(str(i.upstream(port)) for i in routed),
                drain_timeout=r.drain_timeout,
                maintenance=env.maintenance,
                readonly=env.readonly,
                ports=ports,
                remote=bool(env.spec.hosts),
            )
        )
