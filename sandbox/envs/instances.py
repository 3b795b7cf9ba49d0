"""An env's instances: creating them (fresh, cloned, or one more for a promotion), removing them,
and running commands and writing files inside them."""

from __future__ import annotations

from sandbox.backends.base import Backend, ExecResult, InstanceSpec, MountSpec
from sandbox.backends.hostsetup import gateway
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
        mounts = tuple(
            MountSpec(src=str(src), dest=m.dest, readonly=m.readonly, is_file=src.is_file())
            for m in p.mounts
            for src in [(self.ctx.ws.root / m.src).resolve()]
        )
        return InstanceSpec(
            name=f"{env.name}-{idx}",
            env=env.name,
            index=idx,
            image=image or env.image,
            address=address,
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

    def create_all(self, env: Env, backend: Backend, clone_from: str | None = None) -> None:
        """The env's instances, each recorded before it is made (so a crash leaves a row gc finds)."""
        sources = self.ctx.state.instances(clone_from) if clone_from is not None else []
        for idx in range(env.spec.instances):
            iname = f"{env.name}-{idx}"
            self.ctx.state.add_instance(env.name, idx, iname, "creating")
            addr = self._address(env.name, idx)
            spec = self.spec(env, idx, addr)
            self.ctx.emit("progress", "up", f"creating {iname} at {addr}")
            if clone_from is not None:
                backend.clone(sources[min(idx, len(sources) - 1)].name, spec)
            else:
                backend.create(spec)
            backend.start(iname)
            self.ctx.state.set_instance(
                env.name, idx, state="running", image=env.image, routed=True, **picked_address(backend, iname)
            )

    def add(self, env: Env, image: str) -> Instance:
        """One more instance of `env` running `image`, started but not yet routed."""
        backend = self.ctx.env_backend(env)
        idx = max((i.idx for i in self.ctx.state.instances(env.name)), default=-1) + 1
        iname = f"{env.name}-{idx}"
        # one transaction: a crash can never leave a row that looks like a routed old instance
        self.ctx.state.add_instance(env.name, idx, iname, "creating", image=image, routed=False)
        addr = self._address(env.name, idx)
        backend.prepare_image(image)
        backend.create(self.spec(env, idx, addr, image))
        backend.start(iname)
        self.ctx.state.set_instance(env.name, idx, **picked_address(backend, iname))
        if self.ctx.state.get_env(env.name).readonly:
            # the app must see read-only mode from its first request on
            backend.exec(iname, ["/bin/sh", "-c", READONLY_ON])
        return self.ctx.state.set_instance(env.name, idx, state="running")

    def remove(self, env: Env, inst: Instance) -> None:
        self.ctx.env_backend(env).destroy(inst.name)
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
        return self.ctx.env_backend(env), insts[index].name

    def exec(
        self, name: str, argv: list[str], index: int = 0, user: str | None = None, attach: bool = False
    ) -> ExecResult:
        backend, iname = self.pick(name, index)
        return backend.exec(iname, argv, user=user, interactive=attach)

    def set_readonly_flag(self, env: Env, on: bool) -> None:
        """The flag file the app can read (/run/sandbox/readonly) in every instance."""
        backend = self.ctx.env_backend(env)
        for inst in self.ctx.state.instances(env.name):
            backend.exec(inst.name, ["/bin/sh", "-c", READONLY_ON if on else READONLY_OFF])


def picked_address(backend: Backend, iname: str) -> dict[str, str]:
    """The address a backend chose itself (one without "static-address"), to record after start."""
    return {} if "static-address" in backend.capabilities else {"address": backend.address(iname)}
