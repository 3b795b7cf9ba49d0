"""`sandbox image diff A B --json` and the web's `image_diff`: one view of two images' difference.

The packages and files of `store.diff.diff_manifests`, with each listed file's size in A and in B,
and the strategy promotion would pick for that diff (`plan.make_plan`). Every list may be capped
(`limit` entries, and at most MAX_CHARS characters of names in all); `total` counts every change,
listed or not, so a capped view says how much it left out.
"""

from __future__ import annotations

from typing import Any

from sandbox.promote.plan import make_plan
from sandbox.store import ImageStore, diff_manifests

MAX_CHARS = 1_000_000  # of names listed in one capped view: it must fit the RPC's 4 MiB line


def _size(entry: dict[str, Any] | None) -> int | None:
    """A regular file's size from a manifest entry (None for dirs, links, devices, or junk)."""
    if not entry or entry.get("type") != "file":
        return None
    size = entry.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None


class _Budget:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.chars = MAX_CHARS if limit is not None else None

    def take(self, names: list[str]) -> list[str]:
        if self.limit is None:
            return names
        out = []
        for name in names[: self.limit]:
            assert self.chars is not None
            if len(name) > self.chars:
                break
            self.chars -= len(name)
            out.append(name)
        return out


def image_diff_view(store: ImageStore, a: str, b: str, *, limit: int | None = None) -> dict[str, Any]:
    """What changed from image `a` to image `b` (both digests in `store`; NotFound otherwise)."""
    ma, mb = store.manifest(a), store.manifest(b)
    d = diff_manifests(a, ma, b, mb)
    plan = make_plan(d, mb.get("app") if isinstance(mb.get("app"), dict) else None)
    budget = _Budget(limit)
    fa, fb = ma["files"], mb["files"]
    files = {
        "added": budget.take(d.files_added),
        "removed": budget.take(d.files_removed),
        "changed": budget.take(d.files_changed),
    }
    names = {
        "added": budget.take(list(d.packages_added)),
        "removed": budget.take(list(d.packages_removed)),
        "changed": budget.take(list(d.packages_changed)),
    }
    packages = {
        "added": {n: d.packages_added[n] for n in names["added"]},
        "removed": {n: d.packages_removed[n] for n in names["removed"]},
        "changed": {
            n: {"from": d.packages_changed[n][0], "to": d.packages_changed[n][1]} for n in names["changed"]
        },
    }
    return {
        "a": a,
        "b": b,
        "identical": d.empty,
        "packages": packages,
        "files": files,
        # [size in A, size in B] of each listed regular file (null: absent, or not a regular file)
        "sizes": {p: [_size(fa.get(p)), _size(fb.get(p))] for group in files.values() for p in group},
        "total": {
            "packages": {
                "added": len(d.packages_added),
                "removed": len(d.packages_removed),
                "changed": len(d.packages_changed),
            },
            "files": {
                "added": len(d.files_added),
                "removed": len(d.files_removed),
                "changed": len(d.files_changed),
            },
        },
        "limit": limit,
        "app_changed": d.app_changed,
        "users_changed": d.users_changed,
        # as `sandbox promote --plan` from A to B would pick it, for a profile whose
        # promotion.compatible is true (false turns a system change into "maintenance")
        "plan": {"strategy": plan.strategy, "reasons": plan.reasons},
    }
