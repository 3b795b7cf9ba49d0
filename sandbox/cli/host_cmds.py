"""Production host commands: host check, host prepare, host drain."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from sandbox.cli import complete
from sandbox.cli.lazy import lazy
from sandbox.cli.main import Ctx, cli, confirm, json_option
from sandbox.cli.markup import escape
from sandbox.errors import SandboxError

if TYPE_CHECKING:
    from sandbox.envs import Envs
    from sandbox.envs.hosts import check_hosts, prepare_hosts
    from sandbox.envs.profiles import profile_for
else:  # imported when a command runs (sandbox/cli/lazy.py)
    Envs = lazy("sandbox.envs", "Envs")
    check_hosts, prepare_hosts = lazy("sandbox.envs.hosts", "check_hosts", "prepare_hosts")
    profile_for = lazy("sandbox.envs.profiles", "profile_for")


@cli.group()
def host() -> None:
    """Production hosts of a profile (its hosts: list): check, prepare, drain."""


def _profile(envs: Envs, name: str):  # type: ignore[no-untyped-def]
    spec = profile_for(envs.ws, name).spec
    if not spec.hosts:
        raise SandboxError(f"profile {spec.name} has no hosts:", hint="add a hosts: list to the profile")
    return spec


@host.command("check")
@click.argument("profile", shell_complete=complete.profiles)
@json_option
@click.pass_obj
def host_check(obj: Ctx, profile: str) -> None:
    """Report per host what is missing: ssh and host key, root, kernel features, ids, lxc, disk."""
    envs = Envs(obj.ws, obj.output)
    report = check_hosts(envs.ctx, _profile(envs, profile))
    lines = []
    for h in report:
        lines.append(
            f"[bold]{h['host']}[/] ({escape(str(h['ssh']))}): {'ok' if h['ok'] else '[red]not ready[/]'}"
        )
        for c in h["checks"]:  # type: ignore[attr-defined]
            mark = "[green]✓[/]" if c["ok"] else "[red]✗[/]"
            fix = f" → {escape(str(c['fix']))}" if c.get("fix") else ""
            lines.append(f"  {mark} {c['item']}: {escape(str(c['detail']))}{fix}")
    obj.output.result({"hosts": report}, "\n".join(lines))
    if not all(h["ok"] for h in report):
        raise SystemExit(1)


@host.command("prepare")
@click.argument("profile", shell_complete=complete.profiles)
@json_option
@click.pass_obj
def host_prepare(obj: Ctx, profile: str) -> None:
    """Install and start what each host lacks, with the host's own apt (lxc, uidmap, iptables, python3)."""
    envs = Envs(obj.ws, obj.output)
    report = prepare_hosts(envs.ctx, _profile(envs, profile))
    text = "\n".join(
        f"{h['host']}: {'ok' if h['ok'] else 'FAILED'}: {escape(str(h['detail']))}" for h in report
    )
    obj.output.result({"hosts": report}, text)
    if not all(h["ok"] for h in report):
        raise SystemExit(1)


@host.command("drain")
@click.argument("env", shell_complete=complete.envs)
@click.argument("host_name", metavar="HOST")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def host_drain(obj: Ctx, env: str, host_name: str, yes: bool) -> None:
    """Forget HOST for ENV (a host that will not come back): its instances leave the router and the
    state; the host is not contacted."""
    envs = Envs(obj.ws, obj.output)
    confirm(obj, yes, f"forget every instance of {env} on {host_name}")
    gone = envs.drain_host(env, host_name)
    obj.output.result(
        {"env": env, "host": host_name, "forgotten": gone},
        f"{env}: forgot {', '.join(gone) or 'nothing'} on {host_name}",
    )
