"""extends: merging a chain of recipe files, marks of inherited items, cycles, missing parents."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sandbox.config import load_recipe
from sandbox.config.loader import LoadedRecipe
from sandbox.errors import ConfigError, ConfigIssue

BASE = """\
    name: base
    base: {suite: bookworm, variant: minbase}
    packages: [vim, curl, sudo, cron]
    users:
      - name: app
        uid: 1001
      - name: alice
        uid: 1002
        sudo: [/usr/bin/systemctl restart app]
    cron:
      - {name: backup, command: /bin/backup, hour: 3}
    files:
      - {src: files/motd, dest: /etc/motd}
    keys:
      alice: [keys/alice.pub]
    env: {A: "1", B: "2"}
    run: [echo base]
    app: {command: gunicorn app, port: 8000}
"""

WEB = """\
    name: web
    extends: base
    packages: [nginx, curl]
    users:
      - name: alice
        uid: 1003
      - name: bob
    cron:
      - {name: backup, command: /bin/backup2}
    env: {B: "3"}
    run: [echo web]
    app: {port: 9000}
"""


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedRecipe:
    write(tmp_path, "recipes/base.yaml", BASE)
    write(tmp_path, "recipes/files/motd", "hi\n")
    write(
        tmp_path,
        "recipes/keys/alice.pub",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH a\n",
    )
    return load_recipe(write(tmp_path, "recipes/web.yaml", WEB), display_root=tmp_path)


def load_issues(tmp_path: Path, name: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_recipe(tmp_path / "recipes" / f"{name}.yaml", display_root=tmp_path)
    return info.value.issues


def test_merge(loaded: LoadedRecipe, tmp_path: Path) -> None:
    r = loaded.recipe
    assert r.name == "web" and r.extends == "base"
    assert r.packages == ["vim", "curl", "sudo", "cron", "nginx"]
    assert [(u.name, u.uid, u.sudo) for u in r.users] == [
        ("app", 1001, []),
        ("alice", 1003, []),
        ("bob", None, []),
    ]
    assert [(c.name, c.command, c.hour) for c in r.cron] == [("backup", "/bin/backup2", "*")]
    assert r.env == {"A": "1", "B": "3"}
    assert r.run == ["echo base", "echo web"]
    assert r.app is not None and (r.app.command, r.app.port) == ("gunicorn app", 9000)
    assert loaded.sources == [tmp_path / "recipes/base.yaml", tmp_path / "recipes/web.yaml"]
    assert loaded.resolved_files[0].src == (tmp_path / "recipes/files/motd").resolve()
    assert len(loaded.keys["alice"]) == 1


def test_marks_point_to_defining_file(loaded: LoadedRecipe) -> None:
    assert str(loaded.where(("packages", 0))) == "recipes/base.yaml:3:12"
    assert str(loaded.where(("packages", 4))) == "recipes/web.yaml:3:12"
    assert str(loaded.where(("users", 0, "uid"))) == "recipes/base.yaml:6:5"
    assert str(loaded.where(("users", 1, "uid"))) == "recipes/web.yaml:6:5"
    assert str(loaded.where(("files", 0, "src"))) == "recipes/base.yaml:13:6"
    assert str(loaded.where(("env", "A"))) == "recipes/base.yaml:16:7"
    assert str(loaded.where(("env", "B"))) == "recipes/web.yaml:10:7"
    assert loaded.where(("app", "command")).file == "recipes/base.yaml"
    assert loaded.where(("app", "port")).file == "recipes/web.yaml"
    assert loaded.where(("name",)).file == "recipes/web.yaml"


def test_inherited_paths_resolve_against_the_parent(tmp_path: Path) -> None:
    write(tmp_path, "recipes/base.yaml", "name: base\nfiles: [{src: files/missing, dest: /x}]\n")
    write(tmp_path, "recipes/sub/web.yaml", "name: web\nextends: ../base.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(tmp_path / "recipes/sub/web.yaml", display_root=tmp_path)
    (issue,) = info.value.issues
    assert issue.location.file == "recipes/base.yaml" and "recipes/files/missing" in issue.message


def test_cycle(tmp_path: Path) -> None:
    write(tmp_path, "recipes/a.yaml", "name: a\nextends: b\n")
    write(tmp_path, "recipes/b.yaml", "name: b\nextends: a\n")
    (issue,) = load_issues(tmp_path, "a")
    assert issue.message == "extends cycle: recipes/a.yaml -> recipes/b.yaml -> recipes/a.yaml"
    assert (issue.location.file, issue.location.line, issue.path) == ("recipes/b.yaml", 2, "extends")


def test_self_cycle(tmp_path: Path) -> None:
    write(tmp_path, "recipes/a.yaml", "name: a\nextends: a.yaml\n")
    assert "recipes/a.yaml -> recipes/a.yaml" in load_issues(tmp_path, "a")[0].message


def test_missing_parent(tmp_path: Path) -> None:
    write(tmp_path, "recipes/web.yaml", "name: web\nextends: nothere\npakages: []\n")
    found = load_issues(tmp_path, "web")
    assert [(i.path, i.location.line) for i in found] == [("extends", 2), ("pakages", 3)]
    assert "recipes/nothere.yaml" in found[0].message


def test_errors_of_every_file_reported(tmp_path: Path) -> None:
    write(tmp_path, "recipes/base.yaml", "name: base\npackages: [Bad]\nusers: [{name: app, uid: 1}]\n")
    write(tmp_path, "recipes/web.yaml", "extends: base\napp: {port: x}\n")
    found = load_issues(tmp_path, "web")
    where = {(i.location.file, i.path) for i in found}
    assert {
        ("recipes/base.yaml", "packages[0]"),
        ("recipes/base.yaml", "users[0].uid"),
        ("recipes/web.yaml", "app.port"),
        ("recipes/web.yaml", "name"),
        ("recipes/web.yaml", "app.command"),
    } <= where
    assert [(i.location.file, i.location.line) for i in found] == sorted(
        (i.location.file, i.location.line or 0) for i in found
    )


def test_child_may_leave_out_inherited_required_keys(tmp_path: Path) -> None:
    write(tmp_path, "recipes/base.yaml", "name: base\nusers: [{name: app}]\napp: {command: run, port: 80}\n")
    write(tmp_path, "recipes/web.yaml", "name: web\nextends: base\napp: {health: /ok}\n")
    r = load_recipe(tmp_path / "recipes/web.yaml", display_root=tmp_path).recipe
    assert r.app is not None and (r.app.port, r.app.health) == (80, "/ok")


def test_parent_syntax_error(tmp_path: Path) -> None:
    write(tmp_path, "recipes/base.yaml", "name: base\npackages: [\n")
    write(tmp_path, "recipes/web.yaml", "name: web\nextends: base\nprot: 1\n")
    found = load_issues(tmp_path, "web")
    assert {(i.location.file, i.path) for i in found} == {
        ("recipes/base.yaml", ""),
        ("recipes/web.yaml", "prot"),
    }
