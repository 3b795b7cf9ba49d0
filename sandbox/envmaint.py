"""`sandbox gc` and `sandbox diff`: cleaning up after expiry and crashes, and comparing two envs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sandbox.envs import Envs
from sandbox.errors import SandboxError
from sandbox.events import Event
from sandbox.routing.own import OwnRouter
from sandbox.store import diff_manifests


@dataclass
class GcReport:
    removed_envs: list[str] = field(default_factory=list)
    removed_instances: list[str] = field(default_factory=list)
    removed_routers: list[str] = field(default_factory=list)
    removed_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def gc(envs: Envs, *, images: bool = False, now: float | None = None) -> GcReport:
    """Remove expired envs, envs a crash left half-made, and orphans no env owns."""
    report = GcReport()
    t = time.time() if now is None else now
    for env in envs.state.stale_envs(t):
        why = "expired" if env.expired(t) else f"left in state {env.state} by a dead process"
        envs.sink(Event("progress", phase="gc", message=f"removing {env.name} ({why})"))
        envs.teardown(env.name)
        envs.state.event("gc", f"removed ({why})", env=env.name)
        report.removed_envs.append(env.name)
    for name in envs.backends.names():
        # list what exists first, then ask the DB: an `up` running meanwhile records its
        # instance before it creates it, so it is never mistaken for an orphan
        try:
            backend = envs.backends.get(name)
            present = backend.instances()
        except SandboxError as e:  # a backend whose SDK or daemon this host lacks holds nothing
            envs.sink(Event("log", phase="gc", message=f"skipped the {name} backend: {e}"))
            continue
        known = {i.name for i in envs.state.all_instances()}
        for inst in present:
            if inst not in known:
                envs.sink(Event("progress", phase="gc", message=f"removing orphan instance {inst}"))
                backend.destroy(inst)
                report.removed_instances.append(inst)
        if images:
            used = {e.image for e in envs.state.list_envs()}
            used |= {i.image for i in envs.state.all_instances() if i.image}
            for digest in backend.images():
                if digest not in used:
                    backend.forget_image(digest)
                    report.removed_images.append(digest)
        backend.clean_stale()
    routers = sorted(envs.routers.iterdir()) if envs.routers.is_dir() else []
    env_names = {e.name for e in envs.state.list_envs()}
    if routers:
        for d in routers:
            if d.is_dir() and d.name not in env_names:
                envs.router(d.name).remove()  # include files, when the settings say system
                OwnRouter(envs.routers, d.name).remove()  # an nginx of its own, whatever they say
                report.removed_routers.append(d.name)
    return report


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: doc}


def diff_envs(envs: Envs, a: str, b: str) -> dict[str, Any]:
    """Image and configuration differences between two envs (staging vs prod drift)."""
    ea, eb = envs.state.get_env(a), envs.state.get_env(b)
    image = diff_manifests(ea.image, envs.store.manifest(ea.image), eb.image, envs.store.manifest(eb.image))
    fa, fb = _flatten(ea.config["profile"]), _flatten(eb.config["profile"])
    config = [
        {"key": k, a: fa.get(k), b: fb.get(k)}
        for k in sorted(set(fa) | set(fb))
        if fa.get(k) != fb.get(k) and k not in ("name", "extends", "description")
    ]
    return {
        "a": a,
        "b": b,
        "same_image": ea.image == eb.image,
        "image": image.to_dict(),
        "config": config,
        "backend": {a: ea.backend, b: eb.backend},
    }
