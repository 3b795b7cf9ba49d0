"""`sandbox user`: the web frontend's users, their roles per profile and their API tokens (root only).

Passwords are read from a prompt on a terminal, else from the first line of stdin; never from argv,
where every process of the machine can read them. Every change is an audit row (who: root, via the
CLI; what; which user), like the root side's own: never a password or a token.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from sandbox.cli.lazy import lazy
from sandbox.cli.main import Ctx, cli, confirm, json_option
from sandbox.cli.markup import escape
from sandbox.errors import SandboxError
from sandbox.web.roles import ROLES, User, check_pattern, parse_grant

if TYPE_CHECKING:
    from sandbox.config.units import parse_duration
    from sandbox.state import StateDB
    from sandbox.web.auth import Auth
    from sandbox.web.timeline import record
else:  # imported when a command runs (sandbox/cli/lazy.py)
    parse_duration = lazy("sandbox.config.units", "parse_duration")
    StateDB = lazy("sandbox.state", "StateDB")
    Auth = lazy("sandbox.web.auth", "Auth")
    record = lazy("sandbox.web.timeline", "record")


def _auth(obj: Ctx) -> Auth:
    if os.geteuid() != 0:
        raise SandboxError(
            "the web frontend's users are managed by root",
            hint="run it as root: sudo sandbox user ...",
        )
    return Auth(StateDB.for_workspace(obj.ws))


def _password(confirm: bool = True) -> str:
    """From a prompt (a terminal) or the first line of stdin (a pipe)."""
    if sys.stdin.isatty():
        text: str = click.prompt("password", hide_input=True, confirmation_prompt=confirm, err=True)
        return text
    from sandbox.web.auth import MAX_PASSWORD

    line = sys.stdin.readline(MAX_PASSWORD + 2)
    if not line:
        raise SandboxError(
            "no password on stdin",
            hint="pipe it in (printf '%s\\n' \"$PW\" | sandbox user ...) or use a terminal",
        )
    return line[:-1] if line.endswith("\n") else line


def _audit(auth: Auth, action: str, message: str, name: str, **data: Any) -> None:
    """An audit row for a change made by root's CLI (the /audit page lists it)."""
    record(auth.state, "root", action, f"{message} (root's CLI)", None, user=name, via="cli", **data)


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _roles_text(u: User) -> str:
    return ", ".join(f"{p}={r}" for p, r in u.roles) or "no roles"


@cli.group()
def user() -> None:
    """Users of the web frontend (`sandbox serve`): roles per profile, API tokens. Root only."""


@user.command("add")
@click.argument("name")
@click.option(
    "--role",
    "grants",
    multiple=True,
    metavar="PATTERN=ROLE",
    help=f"A role on the profiles matching PATTERN ({', '.join(ROLES)}); repeatable.",
)
@json_option
@click.pass_obj
def user_add(obj: Ctx, name: str, grants: tuple[str, ...]) -> None:
    """Add user NAME; the password is prompted for (or read from stdin)."""
    roles = dict(parse_grant(g) for g in grants)  # checked before the password is asked for
    auth = _auth(obj)
    u = auth.add_user(name, _password(), roles)
    _audit(auth, "user add", f"added user {u.name} ({_roles_text(u)})", u.name, roles=dict(u.roles))
    obj.output.result(u.to_dict(), f"added user {u.name} ({escape(_roles_text(u))})")


@user.command("rm")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def user_rm(obj: Ctx, name: str, yes: bool) -> None:
    """Remove user NAME with its sessions and tokens."""
    auth = _auth(obj)
    auth.get_user(name)
    confirm(obj, yes, f"remove user {name} with its sessions and tokens")
    auth.remove_user(name)
    _audit(auth, "user rm", f"removed user {name}", name)
    obj.output.result({"removed": name}, f"removed user {name}")


@user.command("list")
@json_option
@click.pass_obj
def user_list(obj: Ctx) -> None:
    """The users, their roles and tokens (never a secret)."""
    auth = _auth(obj)
    users, tokens = auth.users(), auth.tokens()
    data = [{**u.to_dict(), "tokens": [t.to_dict() for t in tokens if t.user == u.name]} for u in users]
    lines = []
    for u in users:
        lines.append(f"[bold]{u.name}[/]  {escape(_roles_text(u))}")
        for t in (t for t in tokens if t.user == u.name):
            lines.append(
                f"  token {escape(t.name)}: made {_when(t.created)}, last used {_when(t.last_used)},"
                f" expires {_when(t.expires)}"
            )
    obj.output.result(
        data, "\n".join(lines) or "no users (add one with `sandbox user add NAME --role '*=viewer'`)"
    )


@user.command("passwd")
@click.argument("name")
@json_option
@click.pass_obj
def user_passwd(obj: Ctx, name: str) -> None:
    """Set the password of NAME; every session of NAME ends."""
    auth = _auth(obj)
    auth.get_user(name)
    revoked = auth.set_password(name, _password())
    _audit(auth, "user passwd", f"new password for {name}; {revoked} session(s) ended", name)
    obj.output.result(
        {"user": name, "sessions_revoked": revoked}, f"new password for {name}; {revoked} session(s) ended"
    )


@user.command("role")
@click.argument("name")
@click.argument("pattern")
@click.argument("role", metavar=f"{{{'|'.join(ROLES)}|none}}")
@json_option
@click.pass_obj
def user_role(obj: Ctx, name: str, pattern: str, role: str) -> None:
    """Give NAME ROLE on the profiles matching PATTERN ('none' takes it away)."""
    check_pattern(pattern)
    auth = _auth(obj)
    u = auth.set_role(name, pattern, None if role == "none" else role)
    _audit(auth, "user role", f"{name}: {role} on {pattern}", name, pattern=pattern, role=role)
    obj.output.result(u.to_dict(), f"{u.name}: {escape(_roles_text(u))}")


@user.group("token")
def token() -> None:
    """API tokens: shown once when made, stored hashed."""


@token.command("add")
@click.argument("name")
@click.argument("token_name", metavar="TOKEN")
@click.option("--ttl", metavar="DURATION", help="Expire after this long (e.g. 90d); default: never.")
@json_option
@click.pass_obj
def token_add(obj: Ctx, name: str, token_name: str, ttl: str | None) -> None:
    """Make API token TOKEN for user NAME and print it (the only time it is shown)."""
    try:
        seconds = None if ttl is None else parse_duration(ttl)
    except ValueError as e:
        raise SandboxError(f"--ttl: {e}", hint="e.g. --ttl 90d") from e
    auth = _auth(obj)
    secret = auth.add_token(name, token_name, seconds)
    _audit(auth, "token add", f"token {token_name} for {name}", name, token=token_name, ttl=seconds)
    if not obj.output.as_json:
        click.echo(
            f"token {token_name} of {name}, shown only now (send 'Authorization: Bearer TOKEN'):", err=True
        )
    obj.output.result({"user": name, "name": token_name, "token": secret}, secret)


@token.command("rm")
@click.argument("name")
@click.argument("token_name", metavar="TOKEN")
@json_option
@click.pass_obj
def token_rm(obj: Ctx, name: str, token_name: str) -> None:
    """Revoke API token TOKEN of user NAME."""
    auth = _auth(obj)
    auth.remove_token(name, token_name)
    _audit(auth, "token rm", f"revoked token {token_name} of {name}", name, token=token_name)
    obj.output.result({"user": name, "removed": token_name}, f"revoked token {token_name} of {name}")
