"""sandbox.yaml's `hooks:` and `schedules:` (the web frontend's triggers): read, cached, every bad
value located at its file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.errors import ConfigError, ConfigIssue
from sandbox.settings import Hook, Pipeline, Schedule, Settings, load_settings
from sandbox.workspace import Workspace

GOOD = """\
hooks:
  - name: web
    format: github
    secret_file: /etc/sandbox/hooks/web.secret
    branches:
      main: {recipe: web, promote: prod}
      release/1.x: {recipe: web, profile: staging, verify: false}
  - name: lab
    format: standard
    secret_env: SANDBOX_HOOK_LAB
    tolerance: 60
    branches: {main: {recipe: web}}
schedules:
  - name: nightly
    cron: "30 2 * * *"
    pipeline: {recipe: web, refresh: true}
"""


def load(tmp_path: Path, text: str) -> Settings:
    (tmp_path / "sandbox.yaml").write_text(text)
    return load_settings(Workspace(tmp_path))


def issues(tmp_path: Path, text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.issues


def test_hooks_and_schedules_are_read(tmp_path: Path) -> None:
    s = load(tmp_path, GOOD)
    web, lab = s.hooks
    assert web == Hook(
        name="web",
        format="github",
        secret_file="/etc/sandbox/hooks/web.secret",
        branches={
            "main": Pipeline(recipe="web", promote="prod"),
            "release/1.x": Pipeline(recipe="web", verify=False),
        },
    )
    assert lab.secret_env == "SANDBOX_HOOK_LAB" and lab.tolerance == 60 and lab.max_body == 1024 * 1024
    assert s.schedules == (Schedule("nightly", "30 2 * * *", Pipeline(recipe="web", refresh=True)),)


def test_they_survive_the_cache(tmp_path: Path) -> None:
    (tmp_path / ".sandbox").mkdir()
    first = load(tmp_path, GOOD)
    assert load_settings(Workspace(tmp_path)) == first  # from .sandbox/fingerprints/settings.json
    assert isinstance(load_settings(Workspace(tmp_path)).hooks[0].branches["main"], Pipeline)


def test_none_by_default(tmp_path: Path) -> None:
    assert load(tmp_path, "owner: ci\n").hooks == () and Settings().schedules == ()


MAIN = "hooks[0].branches.main"
HOOK = "hooks:\n  - name: web\n    format: github\n    secret_env: S\n    branches: {main: {recipe: web}}\n"


@pytest.mark.parametrize(
    ("text", "line", "path", "words"),
    [
        (HOOK.replace("github", "bitbucket"), 3, "hooks[0].format", "'github', 'gitea'"),
        (HOOK.replace("secret_env: S", "secret: hunter2"), 4, "hooks[0].secret", "unknown key"),
        (HOOK.replace("secret_env: S", "secret_file: relative/path"), 4, "hooks[0].secret_file", "absolute"),
        (HOOK.replace("secret_env: S", "secret_env: lower"), 4, "hooks[0].secret_env", "pattern"),
        (HOOK.replace("    secret_env: S\n", ""), 2, "hooks[0]", "exactly one of secret_file or secret_env"),
        (HOOK.replace("secret_env: S", "secret_env: S\n    secret_file: /s"), 2, "hooks[0]", "exactly one"),
        (HOOK.replace("name: web", "name: We/b"), 2, "hooks[0].name", "pattern"),
        (HOOK.replace("{main: {recipe: web}}", "{}"), 2, "hooks[0]", "at least one branch"),
        (HOOK.replace("main:", "'../etc':"), 2, "hooks[0]", "not a branch name"),
        (HOOK.replace("main:", "'a;rm -rf':"), 2, "hooks[0]", "not a branch name"),
        (HOOK.replace("main:", "'-x':"), 2, "hooks[0]", "not a branch name"),
        (HOOK.replace("recipe: web", "recipe: ../web"), 5, "hooks[0].branches.main.recipe", "pattern"),
        (HOOK.replace("recipe: web", "recipe: web, profile: St"), 5, f"{MAIN}.profile", "pattern"),
        (HOOK.replace("recipe: web", "recipe: web, deploy: x"), 5, f"{MAIN}.deploy", "unknown"),
        (HOOK + "    tolerance: 0\n", 6, "hooks[0].tolerance", "1 to 3600"),
        (HOOK + "    max_body: 999999999\n", 6, "hooks[0].max_body", "GitHub"),
        (HOOK + HOOK.replace("hooks:\n", ""), 1, "hooks", "used twice"),
        ("schedules:\n  - name: n\n    cron: '61 * * * *'\n    pipeline: {recipe: web}\n", 3,
         "schedules[0].cron", "out of range 0-59"),
        ("schedules:\n  - name: n\n    cron: '0 0 31 2 *'\n    pipeline: {recipe: web}\n", 3,
         "schedules[0].cron", "never fires"),
        ("schedules:\n  - name: n\n    cron: '@daily'\n", 2, "schedules[0].pipeline", "missing"),
        ("schedules:\n  - {name: n, cron: '@daily', pipeline: {recipe: web}}\n"
         "  - {name: n, cron: '@hourly', pipeline: {recipe: web}}\n", 1, "schedules", "used twice"),
    ],
)  # fmt: skip
def test_bad_values_are_located(tmp_path: Path, text: str, line: int, path: str, words: str) -> None:
    found = issues(tmp_path, text)
    assert len(found) == 1, [str(i) for i in found]
    issue = found[0]
    assert (issue.location.file, issue.location.line, issue.path) == ("sandbox.yaml", line, path), str(issue)
    assert words in issue.message


def test_every_problem_at_once(tmp_path: Path) -> None:
    text = (
        "hooks:\n  - name: web\n    format: nope\n    secret_env: S\n    branches: {main: {recipe: Web}}\n"
        "schedules:\n  - {name: n, cron: 'x', pipeline: {recipe: web}}\n"
    )
    assert sorted(i.location.line for i in issues(tmp_path, text)) == [3, 5, 7]
