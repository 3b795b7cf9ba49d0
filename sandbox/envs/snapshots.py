"""Snapshots of an env's instances, and restoring them."""

from __future__ import annotations

import re
import time

from sandbox.envs.context import EnvContext
from sandbox.envs.instances import picked_address
from sandbox.envs.routing import EnvRouting
from sandbox.errors import SandboxError

SNAPSHOT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def check_snapshot_name(snap: str, hint: str) -> None:
    if not SNAPSHOT_NAME.fullmatch(snap) or ".." in snap:
        raise SandboxError(f"invalid snapshot name {snap!r}", hint=hint)


class Snapshots:
    def __init__(self, ctx: EnvContext, routing: EnvRouting) -> None:
        self.ctx = ctx
        self.routing = routing

    def snapshot(self, name: str, snap: str | None = None) -> str:
        env = self.ctx.state.get_env(name)
        backend = self.ctx.env_backend(env)
        backend.require("snapshot")
        snap = snap or time.strftime("snap-%Y%m%d-%H%M%S")
        check_snapshot_name(snap, "lowercase letters, digits, '.', '_' and '-', e.g. before-upgrade")
        if any(s.name == snap for s in self.ctx.state.snapshots(name)):
            raise SandboxError(
                f"{name} already has a snapshot {snap!r}",
                hint=f"pick another name, or `sandbox restore {name} {snap}`",
            )
        done = []
        try:
            for inst in self.ctx.state.instances(name):
                self.ctx.inst_backend(env, inst).snapshot(inst.name, snap)
                done.append(inst)
            self.ctx.state.add_snapshot(name, snap, {"image": env.image, "instances": [i.name for i in done]})
        except BaseException:
            for inst in done:
                self.ctx.inst_backend(env, inst).delete_snapshot(inst.name, snap)
            raise
        self.ctx.state.event("snapshot", f"snapshot {snap}", env=name)
        return snap

    def restore(self, name: str, snap: str) -> None:
        env = self.ctx.state.get_env(name)
        check_snapshot_name(snap, f"see `sandbox status {name}`")
        self.ctx.state.get_snapshot(name, snap)
        for inst in self.ctx.state.instances(name):
            backend = self.ctx.inst_backend(env, inst)
            backend.restore(inst.name, snap)
            if backend.state(inst.name) == "running":  # a re-made container may have a new address
                self.ctx.state.set_instance(name, inst.idx, **picked_address(backend, inst.name))
        self.routing.reroute(name)
        self.ctx.state.event("restore", f"restore {snap}", env=name)
