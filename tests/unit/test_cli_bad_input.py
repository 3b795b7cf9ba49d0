"""Bad input at the CLI edge: one clear message per problem, exit 1, the store untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import sandbox.cli.build_cmds
import sandbox.cli.image_cmds  # noqa: F401  (register commands)
from sandbox.cli.main import cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "recipes", tmp_path / "recipes", ignore=shutil.ignore_patterns("*.lock"))
    (tmp_path / "images" / "manifests").mkdir(parents=True)
    (tmp_path / "images" / "manifests" / "keep.txt").write_text("untouched\n")
    return tmp_path


def _store(ws: Path) -> list[tuple[str, bytes]]:
    return [
        (str(p.relative_to(ws)), p.read_bytes()) for p in sorted((ws / "images").rglob("*")) if p.is_file()
    ]


def _build(ws: Path, *extra: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["-C", str(ws), *extra, "build", "bad"])
    return r.exit_code, r.stdout, r.stderr


def test_all_errors_of_a_file_at_once_with_lines(ws: Path) -> None:
    (ws / "recipes" / "bad.yaml").write_text(
        "name: bad\n"
        "pakages: [python3]\n"  # line 2: unknown key
        "users:\n"
        "  - name: app\n"
        "    uid: lots\n"  # line 5: wrong type
        "files:\n"
        "  - {src: nowhere/, dest: /srv/x}\n"  # line 7: missing src
        "  - {template: t.j2, dest: /../etc/x}\n"  # line 8: missing template + escaping dest
    )
    before = _store(ws)
    code, _out, err = _build(ws)
    assert code == 1
    for needle in (
        "recipes/bad.yaml:2",
        "did you mean 'packages'",
        "recipes/bad.yaml:5",
        "users[0].uid",
        "recipes/bad.yaml:7",
        "files[0].src",
        "recipes/bad.yaml:8",
        "files[1]",
    ):
        assert needle in err, needle
    assert "Traceback" not in err
    assert _store(ws) == before
    assert not (ws / ".sandbox" / "tmp").exists()


def test_yaml_syntax_error_names_line(ws: Path) -> None:
    (ws / "recipes" / "bad.yaml").write_text("name: bad\npackages: [python3\nusers: []\n")
    code, _out, err = _build(ws)
    assert code == 1 and "recipes/bad.yaml:" in err and "error:" in err


def test_json_error_is_machine_readable(ws: Path) -> None:
    (ws / "recipes" / "bad.yaml").write_text("name: bad\nextends: bad\n")
    code, out, _err = _build(ws, "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["error"] == "ConfigError"
    assert doc["issues"] and doc["issues"][0]["file"] == "recipes/bad.yaml"
    assert doc["issues"][0]["line"] == 2


def test_private_key_is_refused_and_never_echoed(ws: Path) -> None:
    secret = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"
    (ws / "recipes" / "keys" / "leak.pub").write_text(
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{secret}\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    (ws / "recipes" / "bad.yaml").write_text(
        "name: bad\nusers: [{name: app}]\nkeys:\n  app: [keys/leak.pub]\n"
    )
    code, out, err = _build(ws)
    assert code == 1
    assert "PRIVATE" in err and "recipes/bad.yaml:4" in err
    assert secret not in err and secret not in out
    code, out, err = _build(ws, "--json")
    assert code == 1 and secret not in out and secret not in err


def test_unknown_recipe_lists_the_known_ones(ws: Path) -> None:
    r = CliRunner().invoke(cli, ["-C", str(ws), "build", "nosuch"])
    assert r.exit_code == 1 and "web" in r.stderr and "hint:" in r.stderr


def test_bad_flag_is_a_usage_error(ws: Path) -> None:
    r = CliRunner().invoke(cli, ["-C", str(ws), "build", "web", "--no-such-flag"])
    assert r.exit_code == 2 and "no-such-flag" in r.stderr
