"""Whether an env's instances are healthy: probes of each instance, and waiting for all of them and
then the router."""

from __future__ import annotations

import time
from dataclasses import replace
from urllib.parse import urlsplit

from sandbox.envs.context import EnvContext
from sandbox.envs.probes import Probe, http_probe, probe_instance, wait_until
from sandbox.errors import SandboxError
from sandbox.state import Env, Instance


class HealthTimeout(SandboxError):
    """An env did not become healthy in time."""


class Health:
    def __init__(self, ctx: EnvContext) -> None:
        self.ctx = ctx

    def _check(self, env: Env, image: str) -> tuple[int | None, str | None, str | None]:
        app = self.ctx.app(image)
        h = env.spec.health
        return app.port, h.path or app.health, h.command

    def probe_instance(self, env: Env, inst: Instance, image: str | None = None) -> Probe:
        port, path, command = self._check(env, image or inst.image or env.image)
        backend = self.ctx.inst_backend(env, inst)
        if inst.address is None and not inst.endpoint:  # a backend that picks its addresses
            inst = replace(inst, address=backend.address(inst.name))
        return probe_instance(backend, inst.name, inst.upstream(port), path, command)

    def probe(self, env: Env) -> dict[str, Probe]:
        return {i.name: self.probe_instance(env, i, env.image) for i in self.ctx.state.instances(env.name)}

    def wait_healthy(self, env: Env, timeout: float | None = None) -> dict[str, Probe]:
        """Until every instance and then the router answer; HealthTimeout (with where to look) if not."""
        h = env.spec.health
        limit = timeout if timeout is not None else h.timeout
        self.ctx.emit("phase-start", "health", f"waiting for {env.name} to be healthy")
        t0 = time.monotonic()
        last: dict[str, Probe] = {}

        def all_ok() -> Probe:
            nonlocal last
            last = self.probe(env)
            bad = [f"{n}: {p.detail}" for n, p in last.items() if not p.ok]
            return Probe(not bad, "; ".join(bad) or "all instances healthy")

        result, took = wait_until(all_ok, limit, h.interval)
        if result.ok and env.url and env.spec.router is not None:
            path = h.path or self.ctx.app(env.image).health or "/"
            url = env.url.rstrip("/") + path
            result, _ = wait_until(lambda: _router_probe(url), max(1.0, limit - took), h.interval)
        self.ctx.state.set_env(env.name, health="healthy" if result.ok else "unhealthy")
        self.ctx.emit("phase-end", "health", result.detail, seconds=round(time.monotonic() - t0, 3))
        if not result.ok:
            raise HealthTimeout(
                f"{env.name} is not healthy after {limit:.0f}s: {result.detail}",
                hint=f"see `sandbox logs {env.name}` and `sandbox status {env.name}`",
            )
        return last


def _router_probe(url: str) -> Probe:
    u = urlsplit(url)
    p = http_probe(u.hostname or "127.0.0.1", u.port or 80, u.path or "/")
    return Probe(p.ok, "router: " + p.detail)
