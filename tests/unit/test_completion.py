"""`sandbox completion SHELL` and the dynamic completion of env, recipe, profile names and image refs
(click's `_SANDBOX_COMPLETE` protocol, run as the shell runs it: a fresh `sandbox` process per TAB),
and the fast start that completion and `sandbox --help` depend on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import sandbox.cli.completion_cmds  # noqa: F401  (registers the command)
from sandbox.cli.main import cli
from sandbox.state import StateDB
from sandbox.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
#: what `sandbox --help` and a completion must not import (each costs tens of ms)
HEAVY = ("sandbox.envs", "sandbox.build", "sandbox.promote", "sandbox.backends", "pydantic", "rich", "yaml")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    for d, names in (("recipes", ("web", "worker")), ("profiles", ("dev", "prod", "staging"))):
        (root / d).mkdir(parents=True)
        for n in names:
            (root / d / f"{n}.yaml").write_text(f"name: {n}\n")
    (root / "recipes" / "web.lock").write_text("")  # not a recipe
    (root / "recipes" / "bad\x1bname.yaml").write_text("")  # never offered to the shell
    db = StateDB.for_workspace(Workspace(root))
    for name, profile in (("staging-42", "staging"), ("prod", "prod"), ("dev-me", "dev")):
        db.claim_env(
            name,
            profile=profile,
            image="sha256:" + "0" * 64,
            backend="lxc",
            owner="me",
            config={},
            expires=None,
            pid=1,
            max_per_owner=None,
        )
    for recipe, tag in (("web", "latest"), ("web", "v1"), ("worker", "latest")):
        (root / "images" / "refs" / recipe).mkdir(parents=True, exist_ok=True)
        (root / "images" / "refs" / recipe / tag).write_text("sha256:" + "0" * 64 + "\n")
    return root


def complete(ws: Path, words: str, **env: str) -> list[str]:
    """What bash gets for the last word of `words` (a fresh process, as from the shell)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    p = subprocess.run(
        [sys.executable, "-m", "sandbox"],
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
            "_SANDBOX_COMPLETE": "bash_complete",
            **env,
        },
        cwd=ws,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line.split(",", 1)[1] for line in p.stdout.splitlines() if line.startswith("plain,")]


def test_env_names(ws: Path) -> None:
    assert complete(ws, "sandbox down ") == ["dev-me", "prod", "staging-42"]
    assert complete(ws, "sandbox status st") == ["staging-42"]
    assert complete(ws, "sandbox promote --to ") == ["dev-me", "prod", "staging-42"]


def test_up_offers_profiles_and_envs(ws: Path) -> None:
    assert complete(ws, "sandbox up ") == ["dev", "dev-me", "prod", "staging", "staging-42"]


def test_recipe_and_profile_names(ws: Path) -> None:
    assert complete(ws, "sandbox build ") == ["web", "worker"]
    assert complete(ws, "sandbox lock w") == ["web", "worker"]
    assert complete(ws, "sandbox host check p") == ["prod"]


def test_image_refs(ws: Path) -> None:
    assert complete(ws, "sandbox image inspect ") == [
        "web",
        "web:latest",
        "web:v1",
        "worker",
        "worker:latest",
    ]
    assert complete(ws, "sandbox up dev-2 --image wo") == ["worker", "worker:latest"]


def test_workspace_option_and_no_workspace(ws: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert complete(elsewhere, f"sandbox -C {ws} build ") == ["web", "worker"]
    assert complete(elsewhere, "sandbox build ") == []  # no workspace: nothing, no error


def test_scripts_for_each_shell() -> None:
    for shell, marker in (
        ("bash", "complete -o nosort -F _sandbox_completion sandbox"),
        ("zsh", "compdef _sandbox_completion sandbox"),
        ("fish", "complete --no-files --command sandbox"),
    ):
        r = CliRunner().invoke(cli, ["completion", shell])
        assert r.exit_code == 0, r.output
        assert marker in r.stdout and "_SANDBOX_COMPLETE" in r.stdout
    r = CliRunner().invoke(cli, ["completion", "bash", "--json"])
    assert json.loads(r.stdout)["shell"] == "bash"


def test_unknown_shell_lists_the_supported_ones() -> None:
    r = CliRunner().invoke(cli, ["completion", "tcsh"])
    assert r.exit_code == 1
    assert "unknown shell 'tcsh': supported shells are bash, zsh, fish" in r.stderr
    r = CliRunner().invoke(cli, ["completion", "zhs"])
    assert "hint: sandbox completion zsh" in r.stderr
    r = CliRunner().invoke(cli, ["--json", "completion", "pwsh"])
    assert r.exit_code == 1 and "bash, zsh, fish" in json.loads(r.stdout)["message"]


def _imported(argv: list[str], env: dict[str, str]) -> set[str]:
    code = (
        "import sys, runpy\n"
        f"sys.argv = {argv!r}\n"
        "try:\n    runpy.run_module('sandbox', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "sys.stderr.write(' '.join(sorted(sys.modules)))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return set(p.stderr.split())


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["sandbox", "--help"], {}),
        (["sandbox"], {"COMP_WORDS": "sandbox ", "COMP_CWORD": "1", "_SANDBOX_COMPLETE": "bash_complete"}),
        (["sandbox"], {"COMP_WORDS": "sandbox up ", "COMP_CWORD": "2", "_SANDBOX_COMPLETE": "bash_complete"}),
    ],
)
def test_help_and_completion_import_nothing_heavy(argv: list[str], env: dict[str, str]) -> None:
    mods = _imported(argv, env)
    assert "sandbox.cli.env_cmds" in mods  # the commands were loaded ...
    heavy = sorted(m for m in mods if m.split(".")[0] in HEAVY or m.startswith(HEAVY))
    assert heavy == []  # ... but not the core they call (sandbox/cli/lazy.py)
