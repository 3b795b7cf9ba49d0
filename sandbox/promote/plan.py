"""Promotion plan: from the image diff, the gentlest strategy that is safe (pure).

only files under the app's static globs changed  → "static": sync them, no restart
code changed                                      → "rolling": one backend at a time
files under the migrations globs changed          → "migrate": read-only, migrate once, rolling, read-write
system packages or users changed                  → "rolling", or "maintenance" when the profile says
                                                     the change is not backward compatible
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from sandbox.store.diff import ImageDiff

STRATEGIES = ("noop", "static", "rolling", "migrate", "maintenance")


@dataclass(frozen=True)
class Plan:
    strategy: str
    reasons: list[str] = field(default_factory=list)
    static_files: list[str] = field(default_factory=list)
    migration_files: list[str] = field(default_factory=list)
    code_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _glob_match(path: str, patterns: list[str]) -> bool:
    for pat in patterns:
        # "/srv/app/static/**" matches everything below; fnmatch's * already crosses "/"
        if fnmatch.fnmatchcase(path, pat) or (pat.endswith("/**") and path.startswith(pat[:-2])):
            return True
    return False


def make_plan(diff: ImageDiff, app: dict[str, Any] | None, *, compatible: bool = True) -> Plan:
    """The strategy for replacing image diff.a by diff.b."""
    if diff.empty:
        return Plan("noop", ["the running image and the candidate are identical"])
    static = list(app.get("static") or []) if app else []
    migrations = list(app.get("migrations") or []) if app else []
    changed = [*diff.files_added, *diff.files_removed, *diff.files_changed]
    static_files = [p for p in changed if _glob_match(p, static)]
    migration_files = [p for p in changed if _glob_match(p, migrations)]
    code_files = [p for p in changed if p not in static_files and p not in migration_files]
    system = bool(diff.packages_added or diff.packages_removed or diff.packages_changed or diff.users_changed)
    reasons = []
    if system:
        n = len(diff.packages_added) + len(diff.packages_removed) + len(diff.packages_changed)
        reasons.append(f"{n} system package(s) changed" if n else "users changed")
        if not compatible:
            reasons.append("the profile marks this change as not backward compatible")
            return Plan("maintenance", reasons, static_files, migration_files, code_files)
    if migration_files:
        reasons.append(f"{len(migration_files)} migration file(s) changed")
        return Plan("migrate", reasons, static_files, migration_files, code_files)
    if system or code_files or diff.app_changed:
        if code_files:
            reasons.append(f"{len(code_files)} code/config file(s) changed")
        if diff.app_changed:
            reasons.append("the app definition changed")
        return Plan("rolling", reasons, static_files, migration_files, code_files)
    reasons.append(f"only {len(static_files)} static file(s) changed")
    return Plan("static", reasons, static_files, migration_files, code_files)
