"""`sandbox diff A B`: image and configuration differences between two envs (staging vs prod drift)."""

from __future__ import annotations

from typing import Any

from sandbox.envs.context import EnvContext
from sandbox.store import diff_manifests


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: doc}


def diff_envs(ctx: EnvContext, a: str, b: str) -> dict[str, Any]:
    ea, eb = ctx.state.get_env(a), ctx.state.get_env(b)
    image = diff_manifests(ea.image, ctx.store.manifest(ea.image), eb.image, ctx.store.manifest(eb.image))
    fa, fb = flatten(ea.spec.to_data()), flatten(eb.spec.to_data())
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
