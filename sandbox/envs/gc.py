"""`sandbox gc`: remove expired envs, envs a crash left half-made, and orphans no env owns (on this
machine, and on production hosts: sandbox/envs/gchosts.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sandbox.envs.context import EnvContext
from sandbox.envs.gchosts import collect_hosts
from sandbox.envs.lifecycle import Lifecycle
from sandbox.envs.routing import EnvRouting
from sandbox.errors import SandboxError
from sandbox.hosts.transport import HostError
from sandbox.routing.own import OwnRouter


@dataclass
class GcReport:
    removed_envs: list[str] = field(default_factory=list)
    removed_instances: list[str] = field(default_factory=list)
    removed_routers: list[str] = field(default_factory=list)
    removed_images: list[str] = field(default_factory=list)
    #: production hosts gc could not finish on (no answer, or their engine failed): a later gc does
    skipped_hosts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def collect(
    ctx: EnvContext,
    lifecycle: Lifecycle,
    routing: EnvRouting,
    *,
    images: bool = False,
    now: float | None = None,
) -> GcReport:
    report = GcReport()
    t = time.time() if now is None else now
    for env in ctx.state.stale_envs(t):
        why = "expired" if env.expired(t) else f"left in state {env.state} by a dead process"
        ctx.emit("progress", "gc", f"removing {env.name} ({why})")
        try:
            lifecycle.teardown(env.name)
        except HostError as e:  # a host that does not answer: the others are still collected
            ctx.emit("warning", "gc", f"kept {env.name}: {e.message}")
            continue
        ctx.state.event("gc", f"removed ({why})", env=env.name)
        report.removed_envs.append(env.name)
    for name in ctx.backends.names():
        # list what exists first, then ask the DB: an `up` running meanwhile records its
        # instance before it creates it, so it is never mistaken for an orphan
        try:
            backend = ctx.backend(name)
            present = backend.instances()
        except SandboxError as e:  # a backend whose SDK or daemon this host lacks holds nothing
            ctx.emit("log", "gc", f"skipped the {name} backend: {e}")
            continue
        known = {i.name for i in ctx.state.all_instances()}
        for inst in present:
            if inst not in known:
                ctx.emit("progress", "gc", f"removing orphan instance {inst}")
                backend.destroy(inst)
                report.removed_instances.append(inst)
        if images:
            kept = backend.images()  # first, then the DB: an `up` meanwhile claims its row before it prepares
            used = {e.image for e in ctx.state.list_envs()}
            used |= {i.image for i in ctx.state.all_instances() if i.image}
            for digest in kept:
                if digest not in used:
                    backend.forget_image(digest)
                    report.removed_images.append(digest)
        backend.clean_stale()
    for h in collect_hosts(ctx, images=images):  # instances and images on production hosts (HOST:NAME)
        report.removed_instances += h.instances
        report.removed_images += h.images
        if h.error is not None:
            report.skipped_hosts.append(h.host)
    env_names = {e.name for e in ctx.state.list_envs()}
    for d in sorted(ctx.routers.iterdir()) if ctx.routers.is_dir() else []:
        if d.is_dir() and d.name not in env_names:
            routing.driver(d.name).remove()  # include files, when the settings say system
            OwnRouter(ctx.routers, d.name).remove()  # an nginx of its own, whatever they say
            report.removed_routers.append(d.name)
    return report
