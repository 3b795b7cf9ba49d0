"""An env's instances: creating them (fresh, cloned, or one more for a promotion), removing them,
and running commands and writing files inside them."""

from __future__ import annotations

import dataclasses

from sandbox.backends.base import Backend, ExecResult, InstanceSpec, MountSpec
from sandbox.backends.hostsetup import gateway
from sandbox.config.placement import place
from sandbox.envs.context import EnvContext
from sandbox.errors import SandboxError
from sandbox.state import Env, Instance

READONLY_ON = "mkdir -p /run/sandbox && touch /run/sandbox/readonly"
READONLY_OFF = "rm -f /run/sandbox/readonly"


class Instances:
    def __init__(self, ctx: EnvContext) -> None:
        self.ctx = ctx

    def spec(self, env: Env, idx: int, address: str, image: str | None = None) -> InstanceSpec:
        p = env.spec
        image = image or env.image
        mounts = tuple(
            MountSpec(src=str(src), dest=m.dest, readonly=m.readonly, is_file=src.is_file())
            for m in p.mounts
            for src in [(self.ctx.ws.root / m.src).resolve()]
        )
        return InstanceSpec(
            name=f"{env.name}-{idx}",
            env=env.name,
            index=idx,
            image=image,
            address=address,
            app_port=self.ctx.app(image).port,
            env_vars=dict(p.env),
            cpus=p.resources.cpus,
            memory=p.resources.memory,
            pids=p.resources.pids,
            mounts=mounts,
            capabilities=p.capabilities,
        )

    def _address(self, env: str, idx: int) -> str:
        subnet = self.ctx.settings.network.subnet
        gw, _ = gateway(subnet)
        return self.ctx.state.allocate_address(env, idx, subnet, reserved={gw})

    def placement(self, env: Env) -> list[str | None]:
        """The host of each instance index (None: this machine)."""
        if not env.spec.hosts:
            return [None] * env.spec.instances
        drained = set(env.config.get("drained_hosts", []))
        if not drained:
            return list(self.ctx.hosts.placement(env.spec))
        # hosts forgotten with `host drain`: their instances come back spread over the others
        rest = [dataclasses.replace(h, instances=None) for h in env.spec.hosts if h.name not in drained]
        return list(place(rest, env.spec.instances)) if rest else []

    def create_all(self, env: Env, backend: Backend | None, clone_from: str | None = None) -> None:
        """The env's instances, each recorded before it is made (so a crash leaves a row gc finds);
        on its host when the profile has hosts (`backend` is then not used)."""
        sources = self.ctx.state.instances(clone_from) if clone_from is not None else []
        for idx, host in enumerate(self.placement(env)):
            iname = f"{env.name}-{idx}"
            b = self.ctx.backend_on(env, host) if host is not None or backend is None else backend
            self.ctx.state.add_instance(env.name, idx, iname, "creating", host=host)
            addr = self._address(env.name, idx)
            spec = self.spec(env, idx, addr)
            self.ctx.emit("progress", "up", f"creating {iname} at {addr}" + (f" on {host}" if host else ""))
            if clone_from is not None:
                b.clone(sources[min(idx, len(sources) - 1)].name, spec)
            else:
                b.create(spec)
            b.start(iname)
            self.ctx.state.set_instance(
                env.name,
                idx,
                state="running",
                image=env.image,
                routed=True,
                endpoint=b.published(spec),
                **picked_address(b, iname),
            )

    def add(self, env: Env, image: str, host: str | None = None) -> Instance:
        """One more instance of `env` running `image` (on `host`, for an env on hosts), started but
        not yet routed."""
        if env.spec.hosts and host is None:
            host = self.ctx.hosts.placement(env.spec)[0]
        backend = self.ctx.backend_on(env, host)
        idx = max((i.idx for i in self.ctx.state.instances(env.name)), default=-1) + 1
        iname = f"{env.name}-{idx}"
        # one transaction: a crash can never leave a row that looks like a routed old instance
        self.ctx.state.add_instance(env.name, idx, iname, "creating", image=image, routed=False, host=host)
        addr = self._address(env.name, idx)
        backend.prepare_image(image)
        spec = self.spec(env, idx, addr, image)
        backend.create(spec)
        backend.start(iname)
        self.ctx.state.set_instance(
            env.name, idx, endpoint=backend.published(spec), **picked_address(backend, iname)
        )
        if self.ctx.state.get_env(env.name).readonly:
            # the app must see read-only mode from its first request on
            backend.exec(iname, ["/bin/sh", "-c", READONLY_ON])
        return self.ctx.state.set_instance(env.name, idx, state="running")

    def remove(self, env: Env, inst: Instance) -> None:
        self.ctx.inst_backend(env, inst).destroy(inst.name)
        self.ctx.state.delete_instance(env.name, inst.idx)

    def pick(self, name: str, index: int) -> tuple[Backend, str]:
        """The backend and instance name of instance `index` (0-based position) of env `name`."""
        env = self.ctx.state.get_env(name)
        insts = self.ctx.state.instances(name)
        if not 0 <= index < len(insts):
            raise SandboxError(
                f"{name} has no instance {index}",
                hint=f"{name} has instances 0..{len(insts) - 1}" if insts else None,
            )
        return self.ctx.inst_backend(env, insts[index]), insts[index].name

    def exec(
        self, name: str, argv: list[str], index: int = 0, user: str | None = None, attach: bool = False
    ) -> ExecResult:
        backend, iname = self.pick(name, index)
        return backend.exec(iname, argv, user=user, interactive=attach)

    def set_readonly_flag(self, env: Env, on: bool) -> None:
        """The flag file the app can read (/run/sandbox/readonly) in every instance."""
        for inst in self.ctx.state.instances(env.name):
            self.ctx.inst_backend(env, inst).exec(
                inst.name, ["/bin/sh", "-c", READONLY_ON if on else READONLY_OFF]
            )


def picked_address(backend: Backend, iname: str) -> dict[str, str]:
    """The address a backend chose itself (one without "static-address"), to record after start."""
    return {} if "static-address" in backend.capabilities else {"address": backend.address(iname)}
