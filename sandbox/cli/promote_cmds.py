"""Promotion commands: verify, promote, rollback, history, maintenance, readonly."""

from __future__ import annotations

import datetime as dt
import sys
from typing import TYPE_CHECKING, Any

import click

from sandbox.cli import complete
from sandbox.cli.lazy import lazy
from sandbox.cli.main import Ctx, cli, confirm, json_option
from sandbox.cli.markup import escape
from sandbox.errors import SandboxError
from sandbox.events import Event

if TYPE_CHECKING:
    from sandbox.envs import Envs
    from sandbox.promote.deploys import Verification
    from sandbox.promote.probe import probe_lines, with_load_probe
    from sandbox.promote.rolling import Promoter, PromoteResult
else:  # imported when a command runs (sandbox/cli/lazy.py)
    Envs = lazy("sandbox.envs", "Envs")
    probe_lines, with_load_probe = lazy("sandbox.promote.probe", "probe_lines", "with_load_probe")
    Promoter = lazy("sandbox.promote.rolling", "Promoter")


@cli.command()
@click.argument("env", shell_complete=complete.envs)
@json_option
@click.pass_obj
def verify(obj: Ctx, env: str) -> None:
    """Check ENV (health, then the recipe's smoke command) and record the result for promotions."""
    ok, detail = Promoter(Envs(obj.ws, obj.output)).verify(env)
    obj.output.result(
        {"env": env, "ok": ok, "detail": detail},
        f"{'[green]verified[/]' if ok else '[red]failed[/]'} {env}: {escape(detail)}",
    )
    if not ok:
        sys.exit(1)


def _print(obj: Ctx, result: PromoteResult, probe: Any, **extra: Any) -> None:
    lines = [
        f"[bold]{result.state}[/] {result.env}: {result.from_image[:19]} → {result.to_image[:19]} "
        f"strategy [bold]{result.plan.strategy}[/] ({'; '.join(result.plan.reasons)})"
    ]
    if result.per_backend:
        lines.append(
            f"  per backend: {', '.join(f'{s:.2f}s' for s in result.per_backend)}; "
            f"total {result.seconds:.2f}s"
        )
    lines += [f"  {line}" for line in probe_lines(probe)]
    obj.output.result({**result.to_dict(), "probe": probe, **extra}, "\n".join(lines))


@cli.command()
@click.argument("ref", required=False, shell_complete=complete.refs)
@click.option(
    "--from",
    "from_env",
    metavar="ENV",
    shell_complete=complete.envs,
    help="Promote the image ENV runs (e.g. staging-42).",
)
@click.option(
    "--to",
    "to_env",
    metavar="ENV",
    required=True,
    shell_complete=complete.envs,
    help="The env to promote to (e.g. prod).",
)
@click.option("--plan", "plan_only", is_flag=True, help="Print the strategy and the diff; change nothing.")
@click.option(
    "--probe", "rps", type=float, metavar="RPS", help="Run a load probe through the router meanwhile."
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Skip the verification gate (recorded in the history).")
@click.option("--resume", is_flag=True, help="Finish a promotion that was interrupted.")
@json_option
@click.pass_obj
def promote(
    obj: Ctx,
    ref: str | None,
    from_env: str | None,
    to_env: str,
    plan_only: bool,
    rps: float | None,
    yes: bool,
    force: bool,
    resume: bool,
) -> None:
    """Promote image REF (or the image of --from ENV) to --to ENV, one backend at a time."""
    envs = Envs(obj.ws, obj.output)
    p = Promoter(envs)
    if resume:
        result, probe = with_load_probe(envs, to_env, rps, lambda: p.resume(to_env))
        _print(obj, result, probe)
        return
    if ref and from_env:
        raise SandboxError(
            "give REF or --from ENV, not both",
            hint="sandbox promote --to prod (the newest verified image), --from staging-42, or REF",
        )
    picked = None
    if from_env:
        candidate, source = envs.get(from_env).image, from_env
    elif ref:
        candidate, source = envs.store.resolve(ref), ref
    else:
        picked = p.latest_verified(to_env)
        candidate, source = picked.image, picked.env
        when = dt.datetime.fromtimestamp(picked.ts).strftime("%Y-%m-%d %H:%M:%S")
        obj.output(
            Event(
                "log",
                phase="promote",
                message=f"picked {candidate[:19]}: verified on {picked.env} at {when} ({picked.detail})",
            )
        )
    plan = p.plan(to_env, candidate)
    if plan_only:
        d = plan.diff
        text = (
            f"{to_env}: {plan.from_image[:19]} → {plan.to_image[:19]}\n"
            f"strategy: [bold]{plan.plan.strategy}[/]"
            f" ({'; '.join(plan.plan.reasons)})\n"
            f"packages: +{len(d['packages']['added'])} -{len(d['packages']['removed'])} "
            f"~{len(d['packages']['changed'])}; files: +{len(d['files']['added'])} "
            f"-{len(d['files']['removed'])} ~{len(d['files']['changed'])}"
        )
        obj.output.result({**plan.to_dict(), "picked": _picked(picked)}, text)
        return
    confirm(obj, yes, f"promote {candidate[:19]} to {to_env} (strategy {plan.plan.strategy})")
    result, probe = with_load_probe(
        envs, to_env, rps, lambda: p.promote(to_env, candidate, source=source, force=force)
    )
    _print(obj, result, probe, picked=_picked(picked))


def _picked(v: Verification | None) -> dict[str, Any] | None:
    return v.to_dict() if v is not None else None


@cli.command()
@click.option(
    "--to", "to_env", metavar="ENV", required=True, shell_complete=complete.envs, help="The env to roll back."
)
@click.option(
    "--probe", "rps", type=float, metavar="RPS", help="Run a load probe through the router meanwhile."
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def rollback(obj: Ctx, to_env: str, rps: float | None, yes: bool) -> None:
    """Put --to ENV back on the image it ran before its last promotion (same rolling swap)."""
    envs = Envs(obj.ws, obj.output)
    p = Promoter(envs)
    confirm(obj, yes, f"roll {to_env} back to {p.rollback_target(to_env)[:19]}")
    result, probe = with_load_probe(envs, to_env, rps, lambda: p.rollback(to_env))
    _print(obj, result, probe)


@cli.command()
@click.argument("env", shell_complete=complete.envs)
@click.option("-n", "--limit", type=int, default=20, show_default=True, help="How many deploys to show.")
@json_option
@click.pass_obj
def history(obj: Ctx, env: str, limit: int) -> None:
    """Promotions and rollbacks of ENV, newest first, with their steps."""
    deploys = Promoter(Envs(obj.ws, obj.output)).history(env, limit)
    lines = []
    for d in deploys:
        when = dt.datetime.fromtimestamp(d.started).strftime("%Y-%m-%d %H:%M:%S")
        took = f"{d.finished - d.started:.1f}s" if d.finished else "-"
        lines.append(
            f"#{d.id} {when} {d.kind:<8} {d.state:<11} {d.from_image[7:19]} → {d.to_image[7:19]} "
            f"{d.strategy:<11} {took}{' forced' if d.forced else ''}"
            f"{' ' + escape(d.error) if d.error else ''}"
        )
    obj.output.result([d.to_dict() for d in deploys], "\n".join(lines) or f"no promotions of {env} yet")


@cli.command()
@click.argument("switch", type=click.Choice(["on", "off"]))
@click.argument("env", shell_complete=complete.envs)
@click.option(
    "--allow", "allow", multiple=True, metavar="ADDR", help="Address or CIDR that still gets through."
)
@json_option
@click.pass_obj
def maintenance(obj: Ctx, switch: str, env: str, allow: tuple[str, ...]) -> None:
    """Show everyone but --allow addresses the "we are updating" page (503), or stop showing it."""
    from sandbox.config import netvalues

    if len(allow) > 256:  # what the router's control socket takes (routing/render.py MAX_ALLOW)
        raise SandboxError(f"{len(allow)} --allow addresses: at most 256", hint="allow a CIDR instead")
    for a in allow:
        try:
            netvalues.network(a)  # the renderer checks again before anything reaches nginx
        except ValueError as e:
            raise SandboxError(
                f"--allow {a!r} is not an address or CIDR", hint="e.g. --allow 10.0.0.5"
            ) from e
    Envs(obj.ws, obj.output).set_maintenance(env, list(allow) if switch == "on" else None)
    obj.output.result(
        {"env": env, "maintenance": switch == "on", "allow": list(allow)},
        f"maintenance {switch} for {env}" + (f" (allowed: {', '.join(allow)})" if allow else ""),
    )


@cli.command()
@click.argument("switch", type=click.Choice(["on", "off"]))
@click.argument("env", shell_complete=complete.envs)
@json_option
@click.pass_obj
def readonly(obj: Ctx, switch: str, env: str) -> None:
    """Answer writes with 503 + Retry-After (the app sees /run/sandbox/readonly), or stop."""
    Envs(obj.ws, obj.output).set_readonly(env, switch == "on")
    obj.output.result({"env": env, "readonly": switch == "on"}, f"read-only {switch} for {env}")
