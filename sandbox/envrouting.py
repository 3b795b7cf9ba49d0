"""An env's router: render it from the state (routed instances, mode), check, reload; its modes."""

from __future__ import annotations

from typing import Any

from sandbox.envcore import EnvsCore
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
from sandbox.state import Env


class EnvRouting(EnvsCore):
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

    def _router_kind(self) -> RouterKind:
        return router_kind(self.settings.routers)

    def router(self, name: str) -> RouterDriver:
        """The env's router: an nginx of its own, or include files in the system nginx."""
        try:
            kind = self.state.get_env(name).config.get("router_nginx") or self._router_kind()
        except SandboxError:  # no such env (an orphaned router dir): what the settings say
            kind = self._router_kind()
        return router_for(
            self.settings.routers,
            self.routers,
            name,
            "system" if kind == "system" else "own",
            str(self.ws.root),
        )

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
