"""Issue 10, class 5: a recipe's inputs stay in the workspace. A parent recipe outside it, a Jinja
include through a symlink, a `files: src:` or key file through a link: all refused, with file:line,
and nothing of the "host file" (a file in tmp outside the workspace) reaches the image."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sandbox.config import load_profile, load_recipe
from sandbox.errors import ConfigError, ConfigIssue

SECRET = "host-secret-7f3a\n"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A directory that stands for the host outside the workspace, with a secret and a recipe."""
    h = tmp_path / "host"
    h.mkdir()
    (h / "secret").write_text(SECRET)
    (h / "evil.yaml").write_text(
        "name: evil\nfiles:\n  - {src: secret, dest: /etc/stolen}\n"
        "  - {template: secret, dest: /etc/stolen2}\n"
    )
    (h / "evil.j2").write_text("{{ 1 }}" + SECRET)
    return h


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "ws"
    (w / "recipes").mkdir(parents=True)
    (w / "profiles").mkdir()
    return w


def recipe(ws: Path, body: str) -> Path:
    path = ws / "recipes" / "web.yaml"
    path.write_text("name: web\npackages: [nginx]\n" + textwrap.dedent(body))
    return path


def refused(ws: Path, path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as e:
        load_recipe(path, display_root=ws)
    assert SECRET.strip() not in str(e.value)
    return e.value.issues


def test_extends_outside_the_workspace_is_refused(ws: Path, host: Path) -> None:
    rel = Path("..") / ".." / "host" / "evil.yaml"
    [issue] = refused(ws, recipe(ws, f"extends: {rel}\n"))
    assert (issue.location.file, issue.location.line) == ("recipes/web.yaml", 3)
    assert "outside the workspace" in issue.message


def test_extends_through_a_symlink_to_outside_is_refused(ws: Path, host: Path) -> None:
    (ws / "recipes" / "base.yaml").symlink_to(host / "evil.yaml")
    [issue] = refused(ws, recipe(ws, "extends: base\n"))
    assert (issue.location.file, issue.location.line, issue.path) == ("recipes/web.yaml", 3, "extends")


def test_a_recipe_that_is_a_link_to_outside_is_refused(ws: Path, host: Path) -> None:
    (ws / "recipes" / "web.yaml").symlink_to(host / "evil.yaml")
    [issue] = refused(ws, ws / "recipes" / "web.yaml")
    assert "outside the workspace" in issue.message


def test_a_jinja_include_through_a_symlink_in_the_workspace_is_refused(ws: Path, host: Path) -> None:
    (ws / "templates").mkdir()
    (ws / "templates" / "inner.j2").symlink_to(host / "evil.j2")
    (ws / "templates" / "app.j2").write_text('head\n{% include "templates/inner.j2" %}\n')
    issues = refused(ws, recipe(ws, "files:\n  - {template: ../templates/app.j2, dest: /etc/app}\n"))
    [issue] = issues
    assert (issue.location.file, issue.location.line) == ("recipes/web.yaml", 4)
    assert "outside the workspace" in issue.message


def test_a_jinja_include_of_a_linked_directory_is_refused(ws: Path, host: Path) -> None:
    (ws / "templates").symlink_to(host)
    (ws / "recipes" / "app.j2").write_text('{% include "templates/evil.j2" %}\n')
    [issue] = refused(ws, recipe(ws, "files:\n  - {template: app.j2, dest: /etc/app}\n"))
    assert "outside the workspace" in issue.message


def test_an_include_inside_the_workspace_still_works(ws: Path) -> None:
    (ws / "templates").mkdir()
    (ws / "templates" / "inner.j2").write_text("inner {{ recipe.name }}\n")
    (ws / "templates" / "link.j2").symlink_to(ws / "templates" / "inner.j2")  # a link that stays inside
    (ws / "recipes" / "app.j2").write_text('{% include "templates/link.j2" %}')
    loaded = load_recipe(recipe(ws, "files:\n  - {template: app.j2, dest: /etc/app}\n"), display_root=ws)
    assert loaded.resolved_files[0].content == b"inner web\n"


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_files_src_through_a_link_to_outside_is_refused(ws: Path, host: Path, kind: str) -> None:
    (ws / "recipes" / "app").symlink_to(host / "secret" if kind == "file" else host)
    [issue] = refused(ws, recipe(ws, "files:\n  - {src: app, dest: /srv/app}\n"))
    assert (issue.location.file, issue.location.line, issue.path) == ("recipes/web.yaml", 4, "files[0].src")
    assert "escapes the workspace" in issue.message


def test_a_key_file_through_a_link_to_outside_is_refused(ws: Path, host: Path) -> None:
    (ws / "recipes" / "keys").mkdir()
    (ws / "recipes" / "keys" / "alice.pub").symlink_to(host / "secret")
    issues = refused(ws, recipe(ws, "users: [{name: alice}]\nkeys:\n  alice: [keys/alice.pub]\n"))
    assert any("escapes the workspace" in i.message and i.location.line == 5 for i in issues), [
        str(i) for i in issues
    ]


def test_a_parent_profile_that_links_out_of_the_profiles_directory_is_refused(ws: Path, host: Path) -> None:
    (host / "base.yaml").write_text("name: base\nrecipe: web\n")
    (ws / "profiles" / "base.yaml").symlink_to(host / "base.yaml")
    (ws / "profiles" / "prod.yaml").write_text("name: prod\nextends: base\n")
    with pytest.raises(ConfigError) as e:
        load_profile(ws / "profiles" / "prod.yaml", display_root=ws)
    [issue] = e.value.issues
    assert (issue.location.file, issue.location.line, issue.path) == ("profiles/prod.yaml", 2, "extends")
