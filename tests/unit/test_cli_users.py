"""`sandbox user add|rm|list|passwd|role|token add|token rm`: root only, --json, passwords from stdin
(never argv), one clear error per bad value and nothing changed; every change an audit row without a
secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner

import sandbox.cli.user_cmds
from sandbox.cli.main import cli
from sandbox.errors import SandboxError
from sandbox.state import StateDB
from sandbox.web.auth import Auth

PW = "correct horse battery"


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 at its defaults takes 64 MiB and ~0.1 s a hash: the tests hash cheaply (one test below
    checks the default)."""
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(sandbox.cli.user_cmds, "Auth", lambda state: Auth(state, hasher=cheap))


def test_the_cli_hashes_with_argon2id_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.cli.user_cmds, "Auth", Auth)
    (tmp_path / "sandbox.yaml").write_text("")
    assert run(tmp_path, "add", "alice", stdin=PW + "\n")[0] == 0
    stored = db_dump(tmp_path)[0][1][0][1]
    assert stored.startswith("$argon2id$") and f"m={PasswordHasher().memory_cost}," in stored


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "sandbox.yaml").write_text("")
    return tmp_path


def run(ws: Path, *args: str, stdin: str | None = None) -> tuple[int, Any, str]:
    r = CliRunner().invoke(cli, ["-C", str(ws), "--json", "user", *args], input=stdin)
    try:
        out = json.loads(r.stdout) if r.stdout.strip() else None
    except ValueError:
        out = r.stdout
    return r.exit_code, out, r.stderr


def db_dump(ws: Path) -> list[tuple[str, list[tuple[Any, ...]]]]:
    state = StateDB(ws / ".sandbox" / "state.db")
    with state.transaction(write=False) as c:
        return [
            (t, [tuple(r) for r in c.execute(f"SELECT * FROM {t}")])
            for t in ("users", "user_roles", "tokens", "sessions")
        ]


def test_add_list_role_and_remove_a_user(ws: Path) -> None:
    code, out, _ = run(
        ws, "add", "alice", "--role", "*=viewer", "--role", "staging=developer", stdin=PW + "\n"
    )
    assert code == 0, out
    assert out["name"] == "alice" and out["roles"] == {"*": "viewer", "staging": "developer"}
    code, out, _ = run(ws, "role", "alice", "prod", "deployer")
    assert code == 0 and out["roles"]["prod"] == "deployer"
    code, out, _ = run(ws, "role", "alice", "staging", "none")
    assert code == 0 and "staging" not in out["roles"]
    code, out, _ = run(ws, "list")
    assert code == 0 and [u["name"] for u in out] == ["alice"] and out[0]["tokens"] == []
    assert PW not in json.dumps(out)
    code, out, _ = run(ws, "rm", "alice", "--yes")
    assert code == 0 and out == {"removed": "alice"}
    assert run(ws, "list")[1] == []


def test_the_password_comes_from_stdin_and_works(ws: Path) -> None:
    run(ws, "add", "bob", "--role", "*=viewer", stdin=PW + "\n")
    auth = Auth(StateDB(ws / ".sandbox" / "state.db"))
    sid, _ = auth.login("bob", PW, "127.0.0.1")
    code, out, _ = run(ws, "passwd", "bob", stdin="a different passphrase\n")
    assert code == 0 and out == {"user": "bob", "sessions_revoked": 1}
    with pytest.raises(SandboxError):
        auth.session_user(sid)
    auth.login("bob", "a different passphrase", "127.0.0.1")


def test_a_token_is_printed_once_and_works(ws: Path) -> None:
    run(ws, "add", "ci", "--role", "staging=developer", stdin=PW + "\n")
    code, out, _ = run(ws, "token", "add", "ci", "gh", "--ttl", "90d")
    assert code == 0 and out["token"].startswith("sbx_")
    auth = Auth(StateDB(ws / ".sandbox" / "state.db"))
    assert auth.token_user(out["token"]).name == "ci"
    listed = run(ws, "list")[1][0]["tokens"]
    assert [t["name"] for t in listed] == ["gh"] and out["token"] not in json.dumps(listed)
    assert listed[0]["expires"] is not None
    code, out2, _ = run(ws, "token", "rm", "ci", "gh")
    assert code == 0 and out2 == {"user": "ci", "removed": "gh"}
    assert run(ws, "list")[1][0]["tokens"] == []


def test_the_token_alone_is_on_stdout_in_text_mode(ws: Path) -> None:
    run(ws, "add", "ci", stdin=PW + "\n")
    r = CliRunner().invoke(cli, ["-C", str(ws), "user", "token", "add", "ci", "gh"])
    assert r.exit_code == 0 and r.stdout.startswith("sbx_") and len(r.stdout.splitlines()) == 1
    assert "shown only now" in r.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "words"),
    [
        (("add", "Alice"), PW, "invalid user name"),
        (("add", "alice;rm"), PW, "invalid user name"),
        (("add", "alice"), "short", "12 to 1024"),
        (("add", "alice"), "", "no password on stdin"),
        (("add", "alice", "--role", "*=root"), PW, "invalid role"),
        (("add", "alice", "--role", "staging"), PW, "PATTERN=ROLE"),
        (("add", "alice", "--role", "../etc=viewer"), PW, "invalid profile pattern"),
        (("add", "taken"), PW, "already exists"),
        (("rm", "ghost", "--yes"), None, "not found"),
        (("passwd", "ghost"), PW, "not found"),
        (("role", "taken", "prod", "god"), None, "invalid role"),
        (("role", "taken", "pr/od", "viewer"), None, "invalid profile pattern"),
        (("role", "ghost", "prod", "viewer"), None, "not found"),
        (("token", "add", "taken", "Bad Name"), None, "invalid token name"),
        (("token", "add", "taken", "t", "--ttl", "soon"), None, "--ttl"),
        (("token", "add", "ghost", "t"), None, "not found"),
        (("token", "rm", "taken", "none"), None, "no token named"),
    ],
)
def test_bad_input_is_one_clear_error_and_changes_nothing(
    ws: Path, args: tuple[str, ...], stdin: str | None, words: str
) -> None:
    run(ws, "add", "taken", "--role", "*=viewer", stdin=PW + "\n")
    before = db_dump(ws)
    code, out, _ = run(ws, *args, stdin=None if stdin is None else stdin + ("\n" if stdin else ""))
    assert code == 1, out
    assert words in out["message"] + str(out["hint"]) and out["hint"]
    assert db_dump(ws) == before


def test_only_root_manages_users(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.cli.user_cmds.os, "geteuid", lambda: 1000)
    code, out, _ = run(ws, "add", "alice", stdin=PW + "\n")
    assert code == 1 and "managed by root" in out["message"] and "sudo" in out["hint"]
    assert not (ws / ".sandbox" / "state.db").exists()


def test_the_password_is_not_an_option() -> None:
    params = {
        p.name
        for cmd in (sandbox.cli.user_cmds.user_add, sandbox.cli.user_cmds.user_passwd)
        for p in cmd.params
    }
    assert not any("pass" in p for p in params)


def test_every_change_is_an_audit_row_without_a_secret(ws: Path) -> None:
    from sandbox.web.timeline import audit

    assert run(ws, "add", "alice", "--role", "staging=developer", stdin=PW + "\n")[0] == 0
    assert run(ws, "role", "alice", "prod", "deployer")[0] == 0
    assert run(ws, "passwd", "alice", stdin="a different passphrase\n")[0] == 0
    code, out, _ = run(ws, "token", "add", "alice", "gh", "--ttl", "1d")
    assert code == 0
    secret = out["token"]
    assert run(ws, "token", "rm", "alice", "gh")[0] == 0
    assert run(ws, "list")[0] == 0  # reads change nothing and record nothing
    assert run(ws, "rm", "nobody", "--yes")[0] != 0  # a refused command records nothing
    assert run(ws, "rm", "alice", "--yes")[0] == 0
    state = StateDB(ws / ".sandbox" / "state.db")
    rows = audit(state, 100)
    assert [(r["who"], r["action"]) for r in reversed(rows)] == [
        ("root", "user add"),
        ("root", "user role"),
        ("root", "user passwd"),
        ("root", "token add"),
        ("root", "token rm"),
        ("root", "user rm"),
    ]
    assert all("alice" in r["detail"] and "root's CLI" in r["detail"] for r in rows)
    events = [e for e in state.events(limit=100) if e["kind"] == "audit"]
    assert [e["data"]["user"] for e in events] == ["alice"] * 6
    assert {e["data"]["via"] for e in events} == {"cli"}
    assert events[0]["data"]["roles"] == {"staging": "developer"}
    assert events[3]["data"] == {"who": "root", "action": "token add", "user": "alice", "via": "cli"} | {
        "token": "gh",
        "ttl": 86400,
    }
    with state.transaction(write=False) as c:
        everything = json.dumps([tuple(r) for r in c.execute("SELECT * FROM events")])
        everything += json.dumps([tuple(r) for r in c.execute("SELECT * FROM feed")])
    for s in (PW, "a different passphrase", secret, secret.split(".")[-1]):
        assert s not in everything
