"""`sandbox init`: a new workspace (recipe, profiles, sample app, sandbox.yaml) from a template."""

from __future__ import annotations

from pathlib import Path

import click

from sandbox.cli.main import Ctx, cli, json_option
from sandbox.cli.markup import escape


@cli.command(short_help="Make a workspace from a template: recipe, profiles, sample app.")
@click.argument("directory", required=False, metavar="[DIR]")
@click.option(
    "-t",
    "--template",
    default="flask",
    show_default=True,
    metavar="NAME",
    help="flask (gunicorn app), static (nginx serving files) or worker (a job worker with /healthz).",
)
@click.option("--name", metavar="RECIPE", help="Recipe name (default: from DIR's name, else `app`).")
@json_option
@click.pass_obj
def init(obj: Ctx, directory: str | None, template: str, name: str | None) -> None:
    """Make a workspace in DIR (default: -C or the current folder): recipes/NAME.yaml, profiles
    prod/staging/dev, a sample app with a health endpoint and a smoke test, .gitignore and
    sandbox.yaml. Existing files are never overwritten: missing ones are added, and when one differs
    from the template's, all such files are listed and nothing is written."""
    from sandbox.scaffold import init as make

    root = directory or obj.workspace_dir or "."
    p = make(Path(root), template, name)
    lines = [f"[green]✓[/] workspace {escape(str(p.root))} (template {p.template}, recipe {p.name})"]
    lines += [f"  [green]wrote[/]    {escape(r)}" for r in sorted(p.write)]
    lines += [f"  [yellow]appended[/] {escape(r)}" for r in sorted(p.append)]
    lines += [f"  [dim]kept[/]     {escape(r)} (already there)" for r in sorted(p.skipped)]
    where = "" if root in (".", "") else f"cd {root} && "
    lines.append(f"next: [bold]{escape(where)}sandbox up dev-me --wait[/] (builds the image, then starts it)")
    obj.output.result(p.to_dict(), "\n".join(lines))
