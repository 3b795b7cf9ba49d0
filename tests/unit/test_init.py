"""`sandbox init`: the templates load with the real schema loaders; existing files are never
overwritten; conflicts are listed and nothing is written; bad input gets one message and a hint."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

import sandbox.cli.init_cmds  # noqa: F401  (register the command)
from sandbox.cli.main import cli
from sandbox.config.loader import load_recipe
from sandbox.config.profile_loader import load_profile_by_name
from sandbox.config.settings_schema import validate_settings
from sandbox.scaffold import templates
from sandbox.settings import Settings

TEMPLATES = ["flask", "static", "worker"]


def init(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["init", *args])
    return r.exit_code, r.stdout, r.stderr


def tree(root: Path) -> dict[str, bytes | str]:
    """Every path below `root`: a file's bytes, a link's target, or 'dir'."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else ("dir" if p.is_dir() else p.read_bytes())
    return out


def test_the_templates_are_the_documented_ones() -> None:
    assert templates() == TEMPLATES


@pytest.mark.parametrize("template", TEMPLATES)
def test_init_into_an_empty_folder_loads_with_the_real_schemas(tmp_path: Path, template: str) -> None:
    ws = tmp_path / "my-shop"
    code, out, err = init(str(ws), "--template", template, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["recipe"] == "my-shop" and doc["template"] == template and doc["skipped"] == []
    assert {".gitignore", "sandbox.yaml", "recipes/my-shop.yaml"} <= set(doc["written"])
    assert {f"profiles/{p}.yaml" for p in ("prod", "staging", "dev")} <= set(doc["written"])
    assert sorted(doc["written"]) == sorted(str(p.relative_to(ws)) for p in ws.rglob("*") if p.is_file())

    loaded = load_recipe(ws / "recipes" / "my-shop.yaml")  # templates rendered, files resolved
    app = loaded.recipe.app
    assert app is not None and app.health == "/healthz" and app.port == 8000 and app.smoke
    assert app.user != "root"
    for name in ("prod", "staging", "dev"):
        prof = load_profile_by_name(ws / "profiles", name).profile
        assert prof.recipe == "my-shop" and prof.health.path == app.health
    assert validate_settings(ws / "sandbox.yaml") == Settings()  # only comments: every default
    ignored = (ws / ".gitignore").read_text().split()
    assert "/images/" in ignored and "/.sandbox/" in ignored


def test_the_commented_settings_are_valid_and_are_the_defaults(tmp_path: Path) -> None:
    assert init(str(tmp_path), "--json")[0] == 0
    text = (tmp_path / "sandbox.yaml").read_text()
    keys = [ln[2:].split("#")[0].rstrip() for ln in text.splitlines() if re.match(r"# ( {2})?[a-z_]+:", ln)]
    (tmp_path / "sandbox.yaml").write_text("\n".join(keys) + "\n")
    s = validate_settings(tmp_path / "sandbox.yaml")
    assert (s.network, s.routers) == (Settings().network, Settings().routers)


def test_the_sample_apps_pass_their_own_checks(tmp_path: Path) -> None:
    """Without LXC: the static site's nginx.conf parses, its smoke script is valid bash, and the
    worker runs here, answers /healthz and passes its smoke command (the flask app: the
    integration test, tests/integration/test_init.py)."""
    assert init(str(tmp_path / "s"), "-t", "static")[0] == 0
    site = tmp_path / "s" / "recipes" / "s" / "site"
    assert os.access(site / "smoke.sh", os.X_OK)
    subprocess.run(["bash", "-n", str(site / "smoke.sh")], check=True)
    if shutil.which("nginx"):
        subprocess.run(["nginx", "-t", "-q", "-e", "stderr", "-c", str(site / "nginx.conf")], check=True)

    assert init(str(tmp_path / "w"), "-t", "worker")[0] == 0
    worker = tmp_path / "w" / "recipes" / "w" / "worker" / "worker.py"
    data = tmp_path / "data"
    for d in ("inbox", "done"):
        (data / d).mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORKER_DIR": str(data), "WORKER_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, str(worker), "run"], env=env)
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 20
        while True:
            try:
                with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200 and json.load(r)["status"] == "ok"
                    break
            except OSError:
                assert time.monotonic() < deadline, "the worker never answered /healthz"
                time.sleep(0.1)
        smoke = subprocess.run(
            [sys.executable, str(worker), "smoke"], env=env, capture_output=True, text=True, timeout=30
        )
        assert smoke.returncode == 0 and "smoke ok" in smoke.stdout, smoke.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_folder_with_an_app_gets_only_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print('mine')\n")
    (tmp_path / ".gitignore").write_text("*.pyc\n/images/")  # no final newline
    (tmp_path / "profiles").mkdir()
    assert init(str(tmp_path / "ref"), "--name", "x")[0] == 0  # the template's own prod.yaml, for "same"
    (tmp_path / "profiles" / "prod.yaml").write_bytes(
        (tmp_path / "ref" / "profiles" / "prod.yaml").read_bytes()
    )
    shutil.rmtree(tmp_path / "ref")

    code, out, err = init(str(tmp_path), "--name", "x", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["skipped"] == ["profiles/prod.yaml"] and doc["appended"] == [".gitignore"]
    assert "app.py" not in doc["written"] and "profiles/prod.yaml" not in doc["written"]
    assert (tmp_path / "app.py").read_text() == "print('mine')\n"
    gitignore = (tmp_path / ".gitignore").read_text()
    assert gitignore.startswith("*.pyc\n/images/\n") and gitignore.count("/images/") == 1
    assert "/.sandbox/" in gitignore

    again = json.loads(init(str(tmp_path), "--name", "x", "--json")[1])  # a second run: nothing to do
    assert (
        again["written"] == []
        and again["appended"] == []
        and len(again["skipped"]) == len(doc["written"]) + 2
    )


def test_conflicts_are_all_listed_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "prod.yaml").write_text("name: prod\nrecipe: mine\n")
    (tmp_path / "sandbox.yaml").write_text("owner: me\n")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "x.yaml").mkdir()  # a folder where the recipe goes
    before = tree(tmp_path)

    code, out, err = init(str(tmp_path), "--name", "x")
    assert code == 1 and out == ""
    assert "3 file(s) of the template clash with what is there, nothing written" in err
    for path in ("profiles/prod.yaml", "sandbox.yaml", "recipes/x.yaml"):
        assert path in err
    assert "hint:" in err and "never overwrites" in err
    assert tree(tmp_path) == before

    code, out, _ = init(str(tmp_path), "--name", "x", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["error"] == "InitConflict"
    assert sorted(c["path"] for c in doc["conflicts"]) == [
        "profiles/prod.yaml",
        "recipes/x.yaml",
        "sandbox.yaml",
    ]
    assert tree(tmp_path) == before


def test_unknown_template_gets_a_did_you_mean(tmp_path: Path) -> None:
    code, out, err = init(str(tmp_path / "n"), "--template", "flsk")
    assert code == 1 and "unknown template 'flsk'" in err
    assert "did you mean flask?" in err and "flask, static, worker" in err
    assert not (tmp_path / "n").exists()
    code, out, _ = init(str(tmp_path / "n"), "-t", "django", "--json")
    assert (
        code == 1
        and "did you mean" not in out
        and json.loads(out)["hint"] == "templates: flask, static, worker"
    )
    code, _, err = init(str(tmp_path / "n"), "--name", "Bad_Name")
    assert code == 1 and "invalid recipe name" in err and not (tmp_path / "n").exists()


def test_dir_that_is_a_file_or_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = init(str(tmp_path / "file"))
    assert code == 1 and "is not a folder" in err
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    code, _, err = init(str(tmp_path / "link"))
    assert code == 1 and "symbolic link" in err and str(tmp_path / "real") in err
    assert list((tmp_path / "real").iterdir()) == []


def test_links_inside_dir_are_never_followed(tmp_path: Path) -> None:
    """A planted link (to a file or a folder outside DIR) is a conflict, never written through."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "sandbox.yaml").symlink_to(outside / "victim")
    (ws / "profiles").symlink_to(outside)
    (ws / "recipes").mkdir()
    (ws / "recipes" / "x.yaml").symlink_to(outside / "new-file")  # dangling: creating it would escape
    code, out, _ = init(str(ws), "--name", "x", "--json")
    doc = json.loads(out)
    assert code == 1
    reasons = {c["path"]: c["reason"] for c in doc["conflicts"]}
    assert reasons["sandbox.yaml"] == reasons["recipes/x.yaml"] == "it is a symbolic link"
    assert reasons["profiles/prod.yaml"] == "a folder on its path is a symbolic link"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "keep\n"
    assert sorted(p.name for p in ws.iterdir()) == ["profiles", "recipes", "sandbox.yaml"]


def test_new_files_belong_to_the_folders_owner(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (init as root in someone's folder)")  # the suite runs as root
    ws = tmp_path / "home"
    ws.mkdir()
    os.chown(ws, 1234, 1234)
    assert init(str(ws))[0] == 0
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in ws.rglob("*")}
    assert owners == {(1234, 1234)}
    assert os.stat(ws / "recipes" / "home" / "app" / "app.py").st_mode & 0o777 == 0o644
    assert init(str(ws / "new"))[0] == 0  # a folder init makes: its parent's owner's too
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in (ws / "new").rglob("*")} == {(1234, 1234)}
    assert (ws / "new").stat().st_uid == 1234


def test_default_dir_is_the_current_folder_or_dash_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["init"])
    assert r.exit_code == 0, r.stderr
    assert (
        tmp_path / "recipes" / f"{re.sub(r'[^a-z0-9-]+', '-', tmp_path.name.lower()).strip('-')}.yaml"
    ).is_file()
    assert "next: sandbox up dev-me --wait" in r.stdout
    other = tmp_path / "other"
    r = CliRunner().invoke(cli, ["-C", str(other), "init", "--name", "svc"])
    assert r.exit_code == 0 and (other / "recipes" / "svc.yaml").is_file()
