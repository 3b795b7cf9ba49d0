"""A validated profile, kept while profiles/ is unchanged (so `sandbox up` skips YAML and pydantic)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.config.resolved import ResolvedProfile
from sandbox.fsutil import atomic_write, private_dir, tree_stats

VERSION = 1


@dataclass(frozen=True)
class ProfileData:
    """The merged profile as plain JSON data (what envs store in their config)."""

    name: str
    data: dict[str, Any]
    digest: str
    sources: list[str]

    @functools.cached_property
    def spec(self) -> ResolvedProfile:
        return ResolvedProfile.from_data(self.data)


def _path(state: Path, name: str) -> Path:
    return state / "fingerprints" / f"profile-{name}.json"


def remember(state: Path, profiles: Path, p: ProfileData) -> None:
    doc = {
        "version": VERSION,
        "stats": tree_stats([profiles]),
        "name": p.name,
        "data": p.data,
        "digest": p.digest,
        "sources": p.sources,
    }
    path = _path(state, p.name)
    private_dir(path.parent)  # a resolved profile holds its env (secrets): root's only
    atomic_write(path, json.dumps(doc, sort_keys=True).encode(), 0o600)


def recall(state: Path, profiles: Path, name: str) -> ProfileData | None:
    try:
        doc = json.loads(_path(state, name).read_text())
    except (OSError, ValueError):
        return None
    if doc.get("version") != VERSION or doc.get("stats") != tree_stats([profiles]):
        return None
    return ProfileData(doc["name"], doc["data"], doc["digest"], doc["sources"])
