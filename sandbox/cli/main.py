"""`sandbox` command line entry point: global flags, error handling, command groups."""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import click

from sandbox import __version__
from sandbox.cli.output import Output
from sandbox.errors import SandboxError
from sandbox.workspace import Workspace, find_workspace


class Ctx:
    def __init__(self, as_json: bool, debug: bool, workspace: str | None) -> None:
        self.output = Output(as_json)
        self.debug = debug
        self._workspace = workspace

    @property
    def workspace_dir(self) -> str | None:
        """The folder -C names, if given."""
        return self._workspace

    @property
    def ws(self) -> Workspace:
        if self._workspace:
            return Workspace(Path(self._workspace).resolve())
        return find_workspace()


# command name → module that defines it; imported only when that command runs (fast start-up)
LAZY_COMMANDS = {
    "build": "build_cmds",
    "lock": "build_cmds",
    "images": "image_cmds",
    "image": "image_cmds",
    "host": "host_cmds",
    "user": "user_cmds",
    "serve": "serve_cmds",
    "doctor": "doctor_cmds",
    "completion": "completion_cmds",
    "init": "init_cmds",
    **dict.fromkeys(
        [
            "up",
            "down",
            "stop",
            "start",
            "ls",
            "status",
            "exec",
            "shell",
            "logs",
            "snapshot",
            "restore",
            "clone",
            "gc",
            "diff",
        ],
        "env_cmds",
    ),
    **dict.fromkeys(["verify", "promote", "rollback", "history", "maintenance", "readonly"], "promote_cmds"),
}


class SandboxGroup(click.Group):
    """Turns expected errors into one line + hint (exit 1), unexpected ones into a crash report (exit 2).

    Commands are loaded lazily, so that `sandbox up` does not pay for the image builder's imports.
    """

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = LAZY_COMMANDS.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"sandbox.cli.{module}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in sorted(set(LAZY_COMMANDS.values())):
            importlib.import_module(f"sandbox.cli.{module}")
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SandboxError as e:
            obj = ctx.obj if isinstance(ctx.obj, Ctx) else None
            out = obj.output if obj else Output(as_json="--json" in sys.argv)
            if obj and obj.debug:
                traceback.print_exc()
            out.error(e.to_dict(), e.message, e.hint)
            sys.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception:
            report = _crash_report()
            click.echo(f"error: unexpected failure; full report in {report}", err=True)
            click.echo("hint: please attach that file to a bug report", err=True)
            sys.exit(2)


def _crash_report() -> str:
    """A new file (mkstemp: O_EXCL, 0600, an unpredictable name), never one at a name that someone
    else could have planted a link at in a shared directory like /tmp."""
    import tempfile

    base = Path(os.environ.get("SANDBOX_LOG_DIR", "/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=base, prefix=f"sandbox-crash-{int(time.time())}-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(f"sandbox {__version__}\nargv: {sys.argv}\n\n{traceback.format_exc()}")
    return path


@click.group(cls=SandboxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout, no progress.")
@click.option("--debug", is_flag=True, help="Show tracebacks for expected errors too.")
@click.option("-C", "--workspace", metavar="DIR", help="Workspace folder (default: nearest with recipes/).")
@click.version_option(__version__, prog_name="sandbox")
@click.pass_context
def cli(ctx: click.Context, as_json: bool, debug: bool, workspace: str | None) -> None:
    """Recipes to reproducible images, staging clones, promotion with no failed request."""
    ctx.obj = Ctx(as_json, debug, workspace)
    ctx.call_on_close(ctx.obj.output.close)


def json_option(f: Any) -> Any:
    """`--json` accepted after the command name too (sandbox images --json)."""

    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            obj = ctx.find_object(Ctx)
            if obj is not None:
                obj.output.as_json = obj.output.quiet = True

    return click.option(
        "--json",
        "as_json_local",
        is_flag=True,
        expose_value=False,
        callback=callback,
        is_eager=True,
        help="Print JSON on stdout.",
    )(f)


def confirm(obj: Ctx, yes: bool, action: str) -> None:
    """Ask "ACTION?" on a terminal unless --yes (or --json); off a terminal, refuse without --yes.
    The one rule for every command that asks."""
    if yes or obj.output.as_json:
        return
    if not sys.stdin.isatty():
        raise SandboxError(
            f"{action}: needs confirmation, and stdin is not a terminal", hint="pass --yes to go ahead"
        )
    click.confirm(f"{action}?", abort=True, err=True)


def main() -> None:
    cli(prog_name="sandbox")
