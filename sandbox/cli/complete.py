"""Dynamic shell completion: env, recipe, profile names and image refs from the workspace.

Each completer runs in a fresh `sandbox` process for every TAB, so it reads the workspace's files
directly (the state DB read-only, no schema checks, no migration) and never fails: whatever cannot
be read completes nothing.
"""

from __future__ import annotations

import re
from contextlib import closing
from pathlib import Path

import click

from sandbox.errors import SandboxError
from sandbox.workspace import Workspace, find_workspace

SHELLS = ("bash", "zsh", "fish")
#: names (and RECIPE:TAG) as they may appear on a command line; nothing else read from the
#: workspace's files is offered to the shell
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(:[A-Za-z0-9][A-Za-z0-9._-]{0,127})?")
LIMIT = 500


def _ws(ctx: click.Context) -> Workspace | None:
    root = ctx.find_root().params.get("workspace")
    try:
        return Workspace(Path(root).resolve()) if root else find_workspace()
    except (SandboxError, OSError):
        return None


def _match(names: list[str], incomplete: str) -> list[str]:
    return sorted({n for n in names if NAME.fullmatch(n) and n.startswith(incomplete)})[:LIMIT]


def _stems(folder: Path) -> list[str]:
    try:
        return [p.stem for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]
    except OSError:
        return []


def env_names(ws: Workspace) -> list[str]:
    db = ws.state / "state.db"
    if not db.is_file():
        return []
    import sqlite3  # only when there are envs to read (a few ms of every TAB otherwise)

    try:
        with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=0.2)) as conn:
            return [str(r[0]) for r in conn.execute("SELECT name FROM envs LIMIT ?", (LIMIT * 2,))]
    except sqlite3.Error:
        return []


def image_refs(ws: Workspace) -> list[str]:
    """RECIPE (its latest) and RECIPE:TAG for every ref of the store (images/refs/RECIPE/TAG)."""
    out: list[str] = []
    try:
        for recipe in (ws.images / "refs").iterdir():
            if recipe.is_dir():
                out.append(recipe.name)
                out += [f"{recipe.name}:{t.name}" for t in recipe.iterdir() if not t.name.startswith(".")]
    except OSError:
        pass
    return out


def recipes(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    ws = _ws(ctx)
    return _match(_stems(ws.recipes), incomplete) if ws else []


def profiles(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    ws = _ws(ctx)
    return _match(_stems(ws.profiles), incomplete) if ws else []


def envs(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    ws = _ws(ctx)
    return _match(env_names(ws), incomplete) if ws else []


def envs_and_profiles(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    """A new env's name: its profile (staging, or staging-SUFFIX), or an existing env."""
    ws = _ws(ctx)
    return _match(env_names(ws) + _stems(ws.profiles), incomplete) if ws else []


def refs(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    ws = _ws(ctx)
    return _match(image_refs(ws), incomplete) if ws else []
