"""Flags agree across commands: every command takes `--json` (after its name too), and every
command that asks for confirmation takes `--yes`. `shell` alone has no --json: it is a terminal."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import click

from sandbox.cli.main import LAZY_COMMANDS, cli

NO_JSON = {"shell"}  # an interactive login shell: there is no document to print


def leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        if isinstance(cmd, click.Group):
            yield from leaves(cmd, (*path, name))
        else:
            yield " ".join((*path, name)), cmd


def test_every_command_takes_json_and_every_asking_one_takes_yes() -> None:
    seen = dict(leaves(cli))
    assert {"promote", "rollback", "logs", "serve", "doctor", "host drain", "user rm"} <= set(seen)
    assert set(LAZY_COMMANDS) <= {name.split()[0] for name in seen}
    for name, cmd in seen.items():
        params = {p.name for p in cmd.params}
        if name not in NO_JSON:
            assert "as_json_local" in params, f"sandbox {name} has no --json"
        asks = "confirm(obj" in inspect.getsource(cmd.callback)  # type: ignore[arg-type]
        assert asks <= ("yes" in params), f"sandbox {name} asks but takes no --yes"
    assert {n for n, c in seen.items() if "yes" in {p.name for p in c.params}} >= {
        "promote",
        "rollback",
        "host drain",
        "user rm",
    }
