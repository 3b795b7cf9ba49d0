"""load_recipe on a single file: a full valid recipe, schema errors, semantic checks."""

from __future__ import annotations

import base64
import os
import struct
import textwrap
from pathlib import Path

import pytest

from sandbox.config import load_recipe
from sandbox.config.loader import LoadedRecipe
from sandbox.errors import ConfigError, ConfigIssue


def pubkey(key_type: str = "ssh-ed25519", comment: str = "alice@laptop") -> str:
    raw = struct.pack(">I", len(key_type)) + key_type.encode() + struct.pack(">I", 32) + b"\x07" * 32
    return f"{key_type} {base64.b64encode(raw).decode()} {comment}"


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(root: Path, text: str, name: str = "web") -> LoadedRecipe:
    return load_recipe(write(root, f"recipes/{name}.yaml", text), display_root=root)


def issues(root: Path, text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load(root, text)
    return info.value.issues


def only(found: list[ConfigIssue], path: str) -> ConfigIssue:
    matching = [i for i in found if i.path == path]
    assert len(matching) == 1, [str(i) for i in found]
    return matching[0]


FULL = """\
    name: web
    description: the web app
    base: {suite: bookworm, variant: apt}
    packages: [nginx, sudo, cron, systemd, nginx]
    users:
      - name: app
        uid: 1001
        sudo: ["/usr/sbin/service gunicorn reload"]
    keys:
      app: [../keys/app.pub]
      root: ["KEYLINE"]
    files:
      - template: ../templates/app.env.j2
        dest: /etc/app.env
        mode: "0640"
        owner: app
      - src: ../static
        dest: /srv/app/static
    cron:
      - name: backup
        command: /usr/local/bin/backup
        minute: 15
        hour: "*/6"
        weekday: mon-fri
    services: [nginx, backup.timer]
    run: ["echo hi"]
    env: {PORT: 8000, DEBUG: false}
    vars: {greeting: hello}
    app:
      command: gunicorn app:app
      port: 8000
      static: ["/srv/app/static/**"]
"""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    write(
        tmp_path,
        "templates/app.env.j2",
        "GREETING={{ greeting }}\nNAME={{ recipe.name }}\nPORT={{ app.port }}\n",
    )
    write(tmp_path, "keys/app.pub", f"# app keys\n{pubkey()}\n\n{pubkey('ssh-rsa', 'ops')}\n")
    (tmp_path / "static").mkdir()
    return tmp_path


def test_full_recipe_loads(workspace: Path) -> None:
    loaded = load(workspace, FULL.replace("KEYLINE", pubkey(comment="root@host")))
    r = loaded.recipe
    assert r.name == "web" and r.base.variant == "apt"
    assert r.packages == ["nginx", "sudo", "cron", "systemd"]
    assert r.services == ["nginx.service", "backup.timer"]
    assert r.env == {"PORT": "8000", "DEBUG": "false"}
    assert r.cron[0].minute == "15" and r.app is not None and r.app.user == "app"
    assert loaded.sources == [workspace / "recipes/web.yaml"]
    tpl, static = loaded.resolved_files
    assert tpl.index == 0 and tpl.mode == 0o640 and tpl.owner == "app" and tpl.src is None
    assert tpl.content == b"GREETING=hello\nNAME=web\nPORT=8000\n"
    assert static.src == (workspace / "static").resolve() and static.is_dir and static.content is None
    assert loaded.keys["app"] == [pubkey(), pubkey("ssh-rsa", "ops")]
    assert loaded.keys["root"] == [pubkey(comment="root@host")]
    digest = loaded.inputs_digest()
    same = FULL.replace("KEYLINE", pubkey(comment="root@host"))
    assert len(digest) == 64 and digest == load(workspace, same).inputs_digest()
    assert digest != load(workspace, same.replace("8000", "8001")).inputs_digest()


def test_where_locations(workspace: Path) -> None:
    loaded = load(workspace, FULL.replace("KEYLINE", pubkey()))
    assert str(loaded.where(("packages", 2))) == "recipes/web.yaml:4:25"
    assert loaded.where(("users", 0, "sudo", 0)).line == 8
    assert loaded.where(("app", "port")).line == 31
    assert loaded.where(("files", 1, "dest")).line == 18
    assert loaded.where(("app", "workdir")) == loaded.where(("app", "command"))  # absent -> the mapping


def test_display_defaults_to_cwd(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(workspace, "recipes/x.yaml", "name: x\npakages: []\n")
    monkeypatch.chdir(workspace / "recipes")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert str(info.value.issues[0].location) == "x.yaml:2:1"


def test_yaml_syntax_error(tmp_path: Path) -> None:
    (issue,) = issues(tmp_path, "name: web\npackages: [vim\nusers: []\n")
    assert issue.location.file == "recipes/web.yaml" and issue.location.line == 3


def test_duplicate_key(tmp_path: Path) -> None:
    found = issues(tmp_path, "name: web\npackages: []\npackages: [vim]\n")
    assert "duplicate key 'packages' (first at line 2)" in [i.message for i in found]


def test_unknown_keys_did_you_mean(tmp_path: Path) -> None:
    found = issues(
        tmp_path,
        """\
        name: web
        pakages: [vim]
        users:
          - name: bob
            sudoo: []
        app: {command: x, port: 80, prot: 81}
        cron: [{name: a, command: b, minit: 5}]
    """,
    )
    top = only(found, "pakages")
    assert (top.message, top.hint, top.location.line) == (
        "unknown key 'pakages'",
        "did you mean 'packages'?",
        2,
    )
    assert only(found, "users[0].sudoo").hint == "did you mean 'sudo'?"
    assert only(found, "users[0].sudoo").location.line == 5
    assert only(found, "app.prot").hint == "did you mean 'port'?"
    assert only(found, "cron[0].minit").hint == "did you mean 'minute'?"
    assert only(issues(tmp_path, "name: web\nzzzz: 1\n"), "zzzz").hint is None


def test_wrong_types(tmp_path: Path) -> None:
    found = issues(
        tmp_path, "name: web\npackages: vim\nusers: [{name: app}]\napp:\n  command: x\n  port: abc\n"
    )
    assert only(found, "app.port").message == "expected an integer, got 'abc'"
    assert only(found, "app.port").location.line == 6
    assert only(found, "packages").message == "expected a list, got 'vim'"


def test_missing_required_is_at_the_mapping(tmp_path: Path) -> None:
    found = issues(tmp_path, "description: x\nusers: [{name: app}]\napp:\n  command: run\n")
    assert only(found, "name").location.line == 1
    port = only(found, "app.port")
    assert port.message == "missing required key 'port'" and (port.location.line, port.location.column) == (
        4,
        3,
    )


def test_int_mode_refused_with_hint(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes/a").write_text("x")
    issue = only(
        issues(tmp_path, "name: web\nfiles:\n  - src: a\n    dest: /a\n    mode: 0644\n"), "files[0].mode"
    )
    assert issue.hint == 'quote it: mode: "0644"' and issue.location.line == 5


def test_missing_src_and_template(tmp_path: Path) -> None:
    found = issues(
        tmp_path,
        """\
        name: web
        files:
          - src: nothere
            dest: /a
          - template: nope.j2
            dest: /b
    """,
    )
    assert "not found" in only(found, "files[0].src").message
    assert only(found, "files[0].src").location.line == 3
    assert "recipes/nope.j2" in only(found, "files[1].template").message


def test_src_and_template_exclusive(tmp_path: Path) -> None:
    assert "exactly one" in only(issues(tmp_path, "name: web\nfiles: [{dest: /a}]\n"), "files[0]").message


def test_template_undefined_variable(workspace: Path) -> None:
    write(workspace, "templates/bad.j2", "ok\n{{ greeting }}\n{{ nope }}\n")
    found = issues(
        workspace,
        "name: web\nvars: {greeting: hi}\nfiles:\n  - template: ../templates/bad.j2\n    dest: /etc/x\n",
    )
    issue = only(found, "files[0].template")
    assert issue.message == "template templates/bad.j2 line 3: 'nope' is undefined"
    assert issue.location.line == 4


def test_template_sandbox(workspace: Path) -> None:
    write(workspace, "templates/evil.j2", "{{ ''.__class__.__mro__ }}\n")
    found = issues(workspace, "name: web\nfiles:\n  - template: ../templates/evil.j2\n    dest: /etc/x\n")
    assert "unsafe" in only(found, "files[0].template").message


def test_template_syntax_error_line(workspace: Path) -> None:
    write(workspace, "templates/syn.j2", "a\nb\n{% for %}\n")
    found = issues(workspace, "name: web\nfiles:\n  - template: ../templates/syn.j2\n    dest: /etc/x\n")
    assert "templates/syn.j2 line 3" in only(found, "files[0].template").message


def test_dest_escapes_image_root(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes/a").write_text("x")
    found = issues(
        tmp_path, "name: web\nfiles: [{src: a, dest: /etc/../../x}, {src: a, dest: /}, {src: a, dest: x}]\n"
    )
    assert "escapes the image root" in only(found, "files[0].dest").message
    assert only(found, "files[1].dest") and only(found, "files[2].dest")


def test_src_symlink_escaping_workspace(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    ws = tmp_path / "ws"
    (ws / "recipes").mkdir(parents=True)
    os.symlink(outside / "secret", ws / "recipes" / "link")
    (ws / "inside").write_text("ok")
    found = issues(
        ws,
        "name: web\nfiles:\n  - {src: link, dest: /a}\n  - {src: ../../outside/secret, dest: /b}\n"
        "  - {src: ../inside, dest: /c}\n",
    )
    assert "escapes the workspace" in only(found, "files[0].src").message
    assert "escapes the workspace" in only(found, "files[1].src").message
    assert len(found) == 2


def test_private_key_refused_and_not_echoed(tmp_path: Path) -> None:
    body = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwTOPSECRETBODY"
    private = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----\n"
    write(tmp_path, "keys/id_ed25519", private)
    text = "name: web\nusers: [{name: bob}]\nkeys:\n  bob:\n    - ../keys/id_ed25519\n    - |\n" + "".join(
        f"      {line}\n" for line in private.splitlines()
    )
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    found = info.value.issues
    assert [i.path for i in found] == ["keys.bob[0]", "keys.bob[1]"]
    assert all("this is a PRIVATE key; give the .pub file" in i.message for i in found)
    assert body not in str(info.value) and "TOPSECRET" not in str(info.value.to_dict())


def test_bad_public_key_not_echoed(tmp_path: Path) -> None:
    found = issues(tmp_path, "name: web\nkeys:\n  root: ['ssh-ed25519 AAAAINVALIDKEYDATA x']\n")
    assert "INVALIDKEYDATA" not in str(only(found, "keys.root[0]"))


def test_keys_for_undeclared_user(tmp_path: Path) -> None:
    found = issues(tmp_path, f"name: web\nusers: [{{name: alice}}]\nkeys:\n  alicee: ['{pubkey()}']\n")
    assert only(found, "keys.alicee").hint == "did you mean 'alice'?"


def test_sudo_needs_package(tmp_path: Path) -> None:
    found = issues(tmp_path, "name: web\nusers:\n  - name: bob\n    sudo: [/usr/bin/true]\n")
    assert only(found, "users[0].sudo").hint == "add sudo to packages"


def test_sudo_all_and_relative_refused(tmp_path: Path) -> None:
    found = issues(
        tmp_path, "name: web\npackages: [sudo]\nusers:\n  - name: bob\n    sudo: [ALL, service x]\n"
    )
    assert "only grants named commands" in (only(found, "users[0].sudo[0]").hint or "")
    assert "absolute" in only(found, "users[0].sudo[1]").message


def test_cross_reference_checks(tmp_path: Path) -> None:
    found = issues(
        tmp_path,
        """\
        name: web
        users: [{name: a, uid: 1500}, {name: b, uid: 1500}]
        cron: [{name: job, command: x}]
        services: [nginx]
        app: {command: x, port: 80, user: root}
    """,
    )
    assert "also used" in only(found, "users[1].uid").message
    assert only(found, "cron").hint == "add cron to packages"
    assert only(found, "services").hint == "add systemd to packages"
    assert "root" in only(found, "app.user").message
    found = issues(tmp_path, "name: web\napp: {command: x, port: 80}\n")
    assert "not declared" in only(found, "app.user").message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("minute", "60"),
        ("hour", "*/0"),
        ("day", "0"),
        ("month", "13"),
        ("weekday", "mon-xyz"),
        ("minute", "5/10"),
        ("hour", "10-2"),
        ("minute", "1,,2"),
        ("weekday", "8"),
    ],
)
def test_cron_field_syntax_errors(tmp_path: Path, field: str, value: str) -> None:
    text = f"name: web\npackages: [cron]\ncron:\n  - name: job\n    command: x\n    {field}: '{value}'\n"
    issue = only(issues(tmp_path, text), f"cron[0].{field}")
    assert issue.location.line == 6 and issue.hint and "cron syntax" in issue.hint


def test_cron_field_syntax_ok(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        """\
        name: web
        packages: [cron]
        cron:
          - {name: a, command: x, minute: "*/15", hour: "0-23/2", day: "1,15", month: jan-jun, weekday: 7}
          - {name: b, command: x, time: daily}
    """,
    )
    assert loaded.recipe.cron[0].weekday == "7"
    found = issues(
        tmp_path, "name: web\npackages: [cron]\ncron: [{name: a.b, command: x, time: daily, hour: 1}]\n"
    )
    assert "dots" in (only(found, "cron[0].name").hint or "")
    assert (
        "cannot be combined"
        in only(
            issues(
                tmp_path, "name: web\npackages: [cron]\ncron: [{name: a, command: x, time: daily, hour: 1}]\n"
            ),
            "cron[0]",
        ).message
    )


def test_many_errors_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(
            tmp_path,
            """\
            name: Web
            packages: [vim, "Bad Pkg"]
            users:
              - name: bob
                uid: 5
            files:
              - {src: nowhere, dest: /x}
            app: {command: x, port: 70000, user: bob}
            env: {1X: y}
        """,
        )
    found = info.value.issues
    assert len(found) >= 5
    assert {1, 2, 5, 7, 8, 9} <= {i.location.line for i in found}
    for line in (1, 2, 5, 7, 8, 9):
        assert f"recipes/web.yaml:{line}:" in str(info.value)
    assert [i.location.line for i in found] == sorted(i.location.line or 0 for i in found)


def test_private_key_in_odd_places_not_echoed(tmp_path: Path) -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\\nSECRETBODY\\n-----END OPENSSH PRIVATE KEY-----"
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f'name: web\nkeys:\n  "{key}": []\ndescription: ["{key}"]\n')
    assert "SECRETBODY" not in str(info.value) and len(info.value.issues) >= 2
