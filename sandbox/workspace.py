"""A workspace: the folder holding recipes/, profiles/, images/ and .sandbox/ (state, caches)."""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import NotFound


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def recipes(self) -> Path:
        return self.root / "recipes"

    @property
    def profiles(self) -> Path:
        return self.root / "profiles"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def state(self) -> Path:
        return self.root / ".sandbox"

    @property
    def cache(self) -> Path:
        """Package cache, apt indices and unpacked base layers (SANDBOX_CACHE overrides)."""
        env = os.environ.get("SANDBOX_CACHE")
        return Path(env) if env else self.state / "cache"

    @property
    def tmp(self) -> Path:
        return self.state / "tmp"

    @property
    def id(self) -> str:
        """A short name of this workspace on this host (labels its containers in daemons)."""
        return hashlib.sha256(str(self.root).encode()).hexdigest()[:12]

    @functools.cached_property
    def runtime(self) -> Path:
        """Where containers and routers live: .sandbox/ when unprivileged ids can reach it, else
        /var/lib/sandbox/ID (a checkout in /root, mode 0700, is common). SANDBOX_RUNTIME overrides.

        The choice is recorded in .sandbox/runtime on first use, so it never moves under running envs.
        """
        env = os.environ.get("SANDBOX_RUNTIME")
        if env:
            return Path(env)
        marker = self.state / "runtime"
        try:
            return Path(marker.read_text().strip())
        except OSError:
            pass
        self.state.mkdir(parents=True, exist_ok=True)
        chosen = self.state if _reachable_by_others(self.state) else Path("/var/lib/sandbox") / self.id
        chosen.mkdir(parents=True, exist_ok=True, mode=0o755)
        marker.write_text(f"{chosen}\n")
        return chosen

    def recipe_path(self, ref: str) -> Path:
        """`web`, `recipes/web.yaml` or any path to a .yaml file."""
        p = Path(ref)
        if p.suffix in (".yaml", ".yml"):
            cand = p if p.is_absolute() or p.exists() else self.root / p
        else:
            cand = self.recipes / f"{ref}.yaml"
        if not cand.is_file():
            known = sorted(x.stem for x in self.recipes.glob("*.yaml")) if self.recipes.is_dir() else []
            raise NotFound(
                f"recipe {ref!r} not found ({cand})",
                hint=f"recipes here: {', '.join(known)}" if known else "create recipes/NAME.yaml",
            )
        return cand.resolve()


def find_workspace(start: Path | None = None) -> Workspace:
    """The nearest folder upward with sandbox.yaml or recipes/ (SANDBOX_WORKSPACE overrides)."""
    env = os.environ.get("SANDBOX_WORKSPACE")
    if env:
        return Workspace(Path(env).resolve())
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "sandbox.yaml").is_file() or (d / "recipes").is_dir():
            return Workspace(d)
    raise NotFound(
        f"no sandbox workspace at or above {here}",
        hint="run inside a folder with recipes/ (or sandbox.yaml), or set SANDBOX_WORKSPACE",
    )


def blocking_dir(path: Path) -> Path | None:
    """The first directory from / to `path` that others (container ids) may not traverse, if any."""
    p = path.resolve()
    for d in (*reversed(p.parents), p):
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return d
        except OSError:
            return d
    return None


def _reachable_by_others(path: Path) -> bool:
    return blocking_dir(path) is None
