"""Environment commands: up, down, stop, start, ls, status, exec, shell, logs, snapshot, clone, gc, diff."""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import TYPE_CHECKING

import click

from sandbox.cli import complete
from sandbox.cli.lazy import lazy
from sandbox.cli.main import Ctx, cli, json_option
from sandbox.cli.markup import escape
from sandbox.cli.safeterm import json_lines, show

if TYPE_CHECKING:
    from sandbox.envs import Envs, EnvView, default_owner
else:  # imported when a command runs (sandbox/cli/lazy.py)
    Envs, default_owner = lazy("sandbox.envs", "Envs", "default_owner")


def _ago(seconds: float) -> str:
    s = int(max(0, seconds))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def _expiry(v: EnvView) -> str:
    if v.expires is None:
        return "-"
    left = v.expires - time.time()
    return "expired" if left <= 0 else f"in {_ago(left)}"


def _show(obj: Ctx, v: EnvView, took: float | None = None) -> None:
    lines = [f"[bold]{v.name}[/] {v.state} ({v.health}) on {v.backend}, image {v.image[7:19]}"]
    for i in v.instances:
        where = f"on {i['host']} ({i['endpoint']})" if i.get("host") else (i["address"] or "-")
        lines.append(f"  {i['name']:<20} {where:<15} {i['state']}")
    if v.url:
        lines.append(f"  url: [link={v.url}]{v.url}[/link]")
    if took is not None:
        lines.append(f"[dim]in {took:.2f}s[/]")
    obj.output.result(
        {**v.to_dict(), **({"seconds": round(took, 3)} if took is not None else {})}, "\n".join(lines)
    )


@cli.command()
@click.argument("name", shell_complete=complete.envs_and_profiles)
@click.option(
    "--image",
    metavar="REF",
    shell_complete=complete.refs,
    help="Run this image instead of the profile's recipe/image.",
)
@click.option("--ttl", metavar="DURATION", help="Remove with `sandbox gc` after this long (e.g. 4h).")
@click.option("--owner", metavar="WHO", help="Who the env belongs to (default: $SUDO_USER or $USER).")
@click.option("--wait", is_flag=True, help="Wait until every instance and the router are healthy.")
@click.option("--timeout", type=float, metavar="SECONDS", help="How long --wait waits (default: profile).")
@json_option
@click.pass_obj
def up(
    obj: Ctx,
    name: str,
    image: str | None,
    ttl: str | None,
    owner: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Start env NAME (PROFILE or PROFILE-SUFFIX, e.g. staging-42) from its profile."""
    t0 = time.monotonic()
    view = Envs(obj.ws, obj.output).up(name, image=image, ttl=ttl, owner=owner, wait=wait, timeout=timeout)
    _show(obj, view, time.monotonic() - t0)


@cli.command()
@click.argument("name", shell_complete=complete.envs)
@json_option
@click.pass_obj
def down(obj: Ctx, name: str) -> None:
    """Remove env NAME: its instances, its router and its state."""
    Envs(obj.ws, obj.output).down(name)
    obj.output.result({"removed": name}, f"removed {name}")


@cli.command()
@click.argument("name", shell_complete=complete.envs)
@json_option
@click.pass_obj
def stop(obj: Ctx, name: str) -> None:
    """Stop env NAME's instances and router (keeps their data)."""
    _show(obj, Envs(obj.ws, obj.output).stop(name))


@cli.command()
@click.argument("name", shell_complete=complete.envs)
@click.option("--wait", is_flag=True, help="Wait until healthy.")
@json_option
@click.pass_obj
def start(obj: Ctx, name: str, wait: bool) -> None:
    """Start a stopped env NAME again."""
    _show(obj, Envs(obj.ws, obj.output).start(name, wait=wait))


@cli.command("ls")
@click.option("--mine", is_flag=True, help="Only envs owned by you.")
@json_option
@click.pass_obj
def ls_cmd(obj: Ctx, mine: bool) -> None:
    """List envs: name, profile, image, backend, owner, state, health, age, expiry, URL."""
    envs = Envs(obj.ws, obj.output)
    views = envs.ls(default_owner(envs.settings) if mine else None)
    obj.output.result([v.to_dict() for v in views], None)
    if obj.output.as_json:
        return
    if not views:
        obj.output.out.print("no environments: sandbox up staging-1")
        return
    from rich.table import Table

    table = Table(box=None)
    for col in ("NAME", "PROFILE", "IMAGE", "BACKEND", "OWNER", "STATE", "HEALTH", "AGE", "EXPIRES", "URL"):
        table.add_column(col)
    now = time.time()
    for v in views:
        table.add_row(
            v.name,
            v.profile,
            v.image[7:19],
            v.backend,
            v.owner,
            v.state,
            v.health,
            _ago(now - v.created),
            _expiry(v),
            v.url or "-",
        )
    obj.output.out.print(table)


@cli.command()
@click.argument("name", shell_complete=complete.envs)
@json_option
@click.pass_obj
def status(obj: Ctx, name: str) -> None:
    """Show env NAME in detail, probing each instance's health now."""
    envs = Envs(obj.ws, obj.output)
    view = envs.view(name)
    probes = envs.probe(name) if view.state == "running" else {}
    for i in view.instances:
        p = probes.get(i["name"])
        i["health"] = ("healthy" if p.ok else "unhealthy") if p else "-"
        i["detail"] = p.detail if p else ""
    data = {**view.to_dict(), "events": envs.events(name, limit=10)}
    lines = [
        f"[bold]{view.name}[/] profile {view.profile}, {view.state}, owner {view.owner}, image {view.image}",
        f"url: {view.url or '-'}  expires: {_expiry(view)}",
    ]
    for i in view.instances:
        lines.append(
            f"  {i['name']:<20} {i['address'] or '-':<15} {i['state']:<8} {i['health']:<9} "
            f"{escape(i['detail'])}"
        )
    for e in data["events"][:5]:
        when = dt.datetime.fromtimestamp(e["ts"]).strftime("%H:%M:%S")
        lines.append(f"  [dim]{when} {e['kind']}: {escape(e['message'])}[/]")
    obj.output.result(data, "\n".join(lines))


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name", shell_complete=complete.envs)
@click.option("-i", "--instance", "index", type=int, default=0, show_default=True, help="Which instance.")
@click.option("-u", "--user", help="Run as this user of the image (default: root).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@json_option
@click.pass_obj
def exec_cmd(obj: Ctx, name: str, index: int, user: str | None, command: tuple[str, ...]) -> None:
    """Run COMMAND in an instance of NAME:  sandbox exec NAME [-i N] [-u USER] -- CMD..."""
    envs = Envs(obj.ws, obj.output)
    if obj.output.as_json:
        r = envs.exec(name, list(command), index, user)
        obj.output.result({"code": r.code, "stdout": r.stdout, "stderr": r.stderr})
        sys.exit(r.code)
    sys.exit(envs.exec(name, list(command), index, user, attach=True).code)


@cli.command()
@click.argument("name", shell_complete=complete.envs)
@click.option("-i", "--instance", "index", type=int, default=0, show_default=True, help="Which instance.")
@click.option("-u", "--user", help="Log in as this user (default: root).")
@click.pass_obj
def shell(obj: Ctx, name: str, index: int, user: str | None) -> None:
    """Open a login shell in an instance of NAME."""
    sys.exit(Envs(obj.ws, obj.output).exec(name, ["/bin/bash", "-l"], index, user, attach=True).code)


@cli.command()
@click.argument("name", shell_complete=complete.envs)
@click.option("-i", "--instance", "index", type=int, default=0, show_default=True, help="Which instance.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", type=int, default=200, show_default=True, help="How many lines.")
@json_option
@click.pass_obj
def logs(obj: Ctx, name: str, index: int, follow: bool, lines: int) -> None:
    """Show the app's logs (journal of sandbox-app.service) of an instance of NAME.

    With --json: one JSON object per line, {"env", "instance", "line"} (also with -f)."""
    argv = Envs(obj.ws, obj.output).logs_argv(name, index, follow, lines)
    try:
        if obj.output.as_json:
            sys.exit(json_lines(argv, {"env": name, "instance": index}))
        sys.exit(show(argv))  # an instance's escape sequences are shown, not obeyed
    except KeyboardInterrupt:
        sys.exit(0)


@cli.command()
@click.argument("name", shell_complete=complete.envs)
@click.argument("snap", required=False)
@json_option
@click.pass_obj
def snapshot(obj: Ctx, name: str, snap: str | None) -> None:
    """Snapshot every instance of NAME (as SNAP, default snap-DATE-TIME)."""
    snap = Envs(obj.ws, obj.output).snapshot(name, snap)
    obj.output.result({"env": name, "snapshot": snap}, f"snapshot {snap} of {name}")


@cli.command()
@click.argument("name", shell_complete=complete.envs)
@click.argument("snap")
@json_option
@click.pass_obj
def restore(obj: Ctx, name: str, snap: str) -> None:
    """Restore every instance of NAME to snapshot SNAP."""
    _show(obj, Envs(obj.ws, obj.output).restore(name, snap))


@cli.command()
@click.argument("src", shell_complete=complete.envs)
@click.argument("dst", shell_complete=complete.envs_and_profiles)
@click.option("--owner", metavar="WHO", help="Owner of the clone.")
@click.option("--wait", is_flag=True, help="Wait until healthy.")
@json_option
@click.pass_obj
def clone(obj: Ctx, src: str, dst: str, owner: str | None, wait: bool) -> None:
    """Create env DST as a copy of env SRC (image and instance data)."""
    t0 = time.monotonic()
    _show(obj, Envs(obj.ws, obj.output).clone(src, dst, owner=owner, wait=wait), time.monotonic() - t0)


@cli.command("gc")
@click.option("--images", is_flag=True, help="Also drop unpacked images no env uses.")
@json_option
@click.pass_obj
def gc_cmd(obj: Ctx, images: bool) -> None:
    """Remove expired envs and whatever a crash left behind, here and on the profiles' hosts."""

    d = Envs(obj.ws, obj.output).gc(images=images).to_dict()
    text = "removed " + ", ".join(
        f"{len(v)} {k.removeprefix('removed_')}" for k, v in d.items() if k.startswith("removed_")
    )
    if d["skipped_hosts"]:
        text += f"; not collected on host {', '.join(d['skipped_hosts'])} (see the warnings)"
    obj.output.result(d, text)


@cli.command("diff")
@click.argument("a", shell_complete=complete.envs)
@click.argument("b", shell_complete=complete.envs)
@json_option
@click.pass_obj
def diff_cmd(obj: Ctx, a: str, b: str) -> None:
    """Image and config differences between envs A and B (e.g. staging drift from prod)."""

    d = Envs(obj.ws, obj.output).diff(a, b)
    img = d["image"]
    lines = [
        f"{a} vs {b}: "
        + ("same image" if d["same_image"] else f"images differ ({img['a'][:19]} → {img['b'][:19]})")
    ]
    for k, v in img["packages"]["changed"].items():
        lines.append(f"  ~ package {k} {v['from']} → {v['to']}")
    for k in ("added", "removed"):
        for name, ver in img["packages"][k].items():
            lines.append(f"  {'+' if k == 'added' else '-'} package {name} {ver}")
    for k in ("added", "removed", "changed"):
        for path in img["files"][k][:50]:
            lines.append(f"  {dict(added='+', removed='-', changed='~')[k]} {path}")
    for c in d["config"]:
        lines.append(f"  config {c['key']}: {c[a]!r} → {c[b]!r}")
    obj.output.result(d, "\n".join(escape(x) for x in lines))
