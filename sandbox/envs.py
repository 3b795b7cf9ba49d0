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
from urllib.parse import urlsplit

from sandbox.backends.base import Backend
from sandbox.backends.hostsetup import gateway
from sandbox.envcore import EnvsCore, EnvView, HealthTimeout, default_owner, picked_address
from sandbox.envrouting import EnvRouting
from sandbox.errors import SandboxError
from sandbox.events import Event
from sandbox.health import Probe, http_probe, probe_instance, wait_until
from sandbox.state import Env, Instance

__all__ = ["EnvView", "Envs", "EnvsCore", "HealthTimeout", "default_owner"]


class Envs(EnvRouting):
    """Environments: the lifecycle of envs and their instances (see envcore.py, envrouting.py)."""

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
                env.name, idx, state="running", image=env.image, routed=True, **picked_address(backend, iname)
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
        self.state.set_instance(name, idx, **picked_address(backend, iname))
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
            self.state.set_instance(name, inst.idx, state="running", **picked_address(backend, inst.name))
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
                self.state.set_instance(name, inst.idx, **picked_address(backend, inst.name))
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
