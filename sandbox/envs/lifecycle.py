"""The life of an env: up, clone, stop, start, down. Every step that creates something is recorded
in the state DB first, so a crash at any point leaves rows that `ls` shows and `gc` cleans."""

from __future__ import annotations

import os
import time

from sandbox.backends.base import Backend
from sandbox.config.profile_cache import ProfileData
from sandbox.envs.context import EnvContext, default_owner
from sandbox.envs.instances import Instances, picked_address
from sandbox.envs.profiles import parse_ttl, profile_for
from sandbox.envs.routing import EnvRouting
from sandbox.errors import SandboxError
from sandbox.hosts.transport import HostError
from sandbox.state import Env


class Lifecycle:
    def __init__(self, ctx: EnvContext, instances: Instances, routing: EnvRouting) -> None:
        self.ctx = ctx
        self.instances = instances
        self.routing = routing

    def image_for(self, p: ProfileData, override: str | None) -> str:
        """The digest an env of profile `p` runs: --image, the profile's image, or its recipe's latest
        (built first when the recipe or its inputs changed)."""
        ref = override or p.spec.image
        if ref is not None:
            return self.ctx.store.resolve(ref)
        recipe = str(p.spec.recipe)
        from sandbox.build.fingerprint import current_image
        from sandbox.build.formats import APP_FORMAT, BASE_FORMAT

        quick = current_image(self.ctx.ws, recipe, (BASE_FORMAT, APP_FORMAT))
        if quick is not None:
            return quick
        from sandbox.build.builder import Builder  # only when a build may be needed

        return Builder(self.ctx.ws, self.ctx.sink).build(recipe).digest

    def up(self, name: str, *, image: str | None, ttl: str | None, owner: str | None) -> Env:
        """Claim the name, create and start the instances, route them; undo everything on failure."""
        p = profile_for(self.ctx.ws, name)
        ttl_s = parse_ttl(ttl) if ttl is not None else p.spec.ttl
        hosted = bool(p.spec.hosts)
        backend = None if hosted else self.ctx.backend(p.spec.backend, p.spec.remote)
        if backend is not None:
            backend.check()
        digest = self.image_for(p, image)
        if hosted:  # every host reachable, ready, and holding the verified image before anything is made
            self.ctx.hosts.ready(p.spec, digest)
        config: dict[str, object] = {
            "profile": p.spec.to_data(),
            "profile_digest": p.digest,
            "sources": p.sources,
        }
        env = self._claim(name, p, digest, p.spec.backend, config, ttl_s, owner)
        self.ctx.state.event("up", f"up {name} with {digest[:19]}", env=name)
        try:
            if backend is not None:
                backend.prepare_image(digest)
            self.instances.create_all(env, backend)
            return self.ctx.state.set_env(name, state="running", url=self.routing.route(env), pid=None)
        except BaseException as e:
            self.ctx.emit("warning", "up", f"up {name} failed; removing what was created")
            self.teardown(name, backend)
            self.ctx.state.event("up-failed", str(e), env=name)
            raise

    def clone(self, src: str, dst: str, *, owner: str | None) -> Env:
        """A new env `dst` whose instances are copies of `src`'s (their data, not only the image)."""
        source = self.ctx.state.get_env(src)
        p = profile_for(self.ctx.ws, dst)
        if source.spec.hosts or p.spec.hosts:
            raise SandboxError(
                f"cannot clone {src} to {dst}: cloning copies instance data, which stays on one machine",
                hint=f"start {dst} from the image instead: sandbox up {dst} --image {source.image[:19]}",
            )
        backend = self.ctx.env_backend(source)
        backend.require("clone")
        backend.check()
        count = len(self.ctx.state.instances(src))
        config = {
            **source.config,
            "profile": p.spec.with_instances(count).to_data(),
            "profile_digest": p.digest,
            "sources": p.sources,
            "cloned_from": src,
        }
        env = self._claim(dst, p, source.image, source.backend, config, p.spec.ttl, owner)
        try:
            self.instances.create_all(env, backend, clone_from=src)
            env = self.ctx.state.set_env(dst, state="running", url=self.routing.route(env), pid=None)
        except BaseException:
            self.teardown(dst, backend)
            raise
        self.ctx.state.event("clone", f"clone of {src}", env=dst)
        return env

    def _claim(
        self,
        name: str,
        p: ProfileData,
        image: str,
        backend: str,
        config: dict[str, object],
        ttl: float | None,
        owner: str | None,
    ) -> Env:
        return self.ctx.state.claim_env(
            name,
            profile=p.name,
            image=image,
            backend=backend,
            owner=owner or default_owner(self.ctx.settings),
            config=config,
            expires=time.time() + ttl if ttl else None,
            pid=os.getpid(),
            max_per_owner=p.spec.max_per_owner,
        )

    def teardown(self, name: str, backend: Backend | None = None) -> None:
        """Remove whatever exists of env `name` (its router, instances, rows); safe to repeat."""
        try:
            env: Env | None = self.ctx.state.get_env(name)
        except SandboxError:
            env = None
        if env is not None:
            self.ctx.state.set_env(name, state="deleting", pid=os.getpid())
            if not env.spec.hosts:
                backend = backend or self.ctx.env_backend(env)
        self.routing.driver(name, env).remove()
        if env is not None and env.spec.hosts:
            # each instance on its host: the recorded ones, and those up was about to make
            where = {i.name: i.host for i in self.ctx.state.instances(name)}
            for idx, host in enumerate(self.instances.placement(env)):
                where.setdefault(f"{name}-{idx}", host)
            for iname, host in where.items():
                try:
                    self.ctx.backend_on(env, host).destroy(iname)
                except HostError as e:
                    raise HostError(
                        f"cannot remove {iname}: {e.message}",
                        hint=f"when {host} is back, run this again; if it never returns: "
                        f"sandbox host drain {name} {host}",
                        host=host,
                    ) from e
        elif backend is not None:
            recorded = [i.name for i in self.ctx.state.instances(name)]
            planned = [f"{name}-{idx}" for idx in range(env.spec.instances)] if env is not None else []
            for iname in dict.fromkeys([*recorded, *planned]):
                backend.destroy(iname)
        self.ctx.state.delete_env(name)

    def down(self, name: str) -> None:
        self.ctx.state.get_env(name)
        self.teardown(name)
        self.ctx.state.event("down", f"down {name}", env=name)

    def stop(self, name: str) -> Env:
        env = self.ctx.state.get_env(name)
        for inst in self.ctx.state.instances(name):
            self.ctx.inst_backend(env, inst).stop(inst.name)
            self.ctx.state.set_instance(name, inst.idx, state="stopped")
        self.routing.driver(name, env).stop()
        return self.ctx.state.set_env(name, state="stopped", health="unknown")

    def start(self, name: str) -> Env:
        env = self.ctx.state.get_env(name)
        if not env.spec.hosts:
            self.ctx.env_backend(env).check()
        for inst in self.ctx.state.instances(name):
            backend = self.ctx.inst_backend(env, inst)
            if backend.state(inst.name) != "running":
                backend.start(inst.name)
            self.ctx.state.set_instance(name, inst.idx, state="running", **picked_address(backend, inst.name))
        return self.ctx.state.set_env(name, state="running", url=self.routing.route(env))
