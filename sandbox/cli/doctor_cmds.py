"""`sandbox doctor`: renders sandbox.doctor's checks (a table, or a JSON list of checks)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from sandbox.cli.main import Ctx, cli, json_option
from sandbox.cli.markup import escape
from sandbox.cli.safeterm import visible
from sandbox.doctor import BACKENDS
from sandbox.errors import SandboxError

if TYPE_CHECKING:
    from sandbox.doctor import Check
STYLE = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}


def _safe(text: str | None) -> str:
    """Host-provided text, shown literally: no markup, no terminal controls."""
    return escape(visible((text or "").encode()).decode()) if text else ""


@cli.command()
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    help="Check only what this backend needs (its problems fail). Default: all; lxc's problems fail.",
)
@json_option
@click.pass_obj
def doctor(obj: Ctx, backend: str | None) -> None:
    """Check what this host has and lacks for each backend, with the command that fixes each problem.

    Exits 1 when the default backend (lxc; or --backend) cannot work; optional backends only warn.
    """
    from sandbox.doctor.run import exit_code, run_checks

    try:
        ws = obj.ws
    except SandboxError:
        ws = None  # outside a workspace: everything but the store's and runtime's disk is checked
    checks = run_checks(backend=backend, ws=ws)
    data = [c.to_dict() for c in checks]
    code = exit_code(checks)
    obj.output.result(data, None)
    if not obj.output.as_json:
        _table(obj, checks, code)
    if code:
        sys.exit(code)


def _table(obj: Ctx, checks: list[Check], code: int) -> None:
    from rich.table import Table

    root = next((c for c in checks if c.name == "root" and c.status != "ok"), None)
    if root is not None:
        obj.output.out.print(
            "[bold red]not root:[/] sandbox must run as root (sudo sandbox ...). The checks below ran "
            "anyway; what only root may read (some sockets, files) shows as a problem."
        )
    table = Table(box=None, show_lines=False)
    for col in ("CHECK", "BACKEND", "STATUS", "FOUND / FIX"):
        table.add_column(col, overflow="fold")
    for c in checks:
        text = _safe(c.found)
        if c.status != "ok":
            text += f"\n[cyan]fix:[/] {_safe(c.fix)}"
            if c.command:
                text += f"\n[cyan]run:[/] [bold]{_safe(c.command)}[/]"
        table.add_row(c.name, c.backend, STYLE[c.status], text)
    obj.output.out.print(table)
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    if code:
        summary = f"[bold red]{fails} failed[/], {warns} warning(s): the required backend cannot work"
    else:
        summary = f"[green]ready[/] ({warns} warning(s))"
    obj.output.out.print(summary)
