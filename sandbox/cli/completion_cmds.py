"""`sandbox completion SHELL`: the shell's completion script (click's `_SANDBOX_COMPLETE` protocol)."""

from __future__ import annotations

import sys

import click

from sandbox.cli.complete import SHELLS
from sandbox.cli.main import Ctx, cli, json_option
from sandbox.errors import SandboxError


@cli.command()
@click.argument("shell", metavar="{bash|zsh|fish}", shell_complete=lambda *_: list(SHELLS))
@json_option
@click.pass_obj
def completion(obj: Ctx, shell: str) -> None:
    """Print the completion script of SHELL: commands, options, and the workspace's env, recipe and
    profile names and image refs.

    \b
    bash: eval "$(sandbox completion bash)"    (in ~/.bashrc)
    zsh:  eval "$(sandbox completion zsh)"     (in ~/.zshrc)
    fish: sandbox completion fish > ~/.config/fish/completions/sandbox.fish
    """
    if shell not in SHELLS:
        import difflib

        near = difflib.get_close_matches(shell, SHELLS, n=1)
        raise SandboxError(
            f"unknown shell {shell!r}: supported shells are {', '.join(SHELLS)}",
            hint=f"sandbox completion {near[0] if near else SHELLS[0]}",
        )
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # click has all of SHELLS
    script = cls(cli, {}, "sandbox", "_SANDBOX_COMPLETE").source()
    if obj.output.as_json:
        obj.output.result({"shell": shell, "script": script})
    else:
        sys.stdout.write(script)
