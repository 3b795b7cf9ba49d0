"""Workspace settings (sandbox.yaml): defaults, overrides, every bad value located."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.errors import ConfigError, ConfigIssue
from sandbox.settings import Network, Routers, Settings, load_settings, walk
from sandbox.workspace import Workspace


def load(tmp_path: Path, text: str | None) -> Settings:
    if text is not None:
        (tmp_path / "sandbox.yaml").write_text(text)
    return load_settings(Workspace(tmp_path))


def issues(tmp_path: Path, text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.issues


def only(tmp_path: Path, text: str) -> ConfigIssue:
    found = issues(tmp_path, text)
    assert len(found) == 1, [str(i) for i in found]
    return found[0]


def test_defaults_without_a_sandbox_yaml(tmp_path: Path) -> None:
    s = load(tmp_path, None)
    assert s == Settings()
    assert s.network.bridge == "sandbox0"
    assert s.network.subnet == "10.213.0.0/24"
    assert s.routers.port_range == (18000, 18999)
    assert s.owner is None


def test_sandbox_yaml_overrides_what_it_names(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        "network: {bridge: sbxtest0, subnet: 10.214.0.0/24}\n"
        "routers: {port_range: [19000, 19199]}\n"
        "owner: ci\n",
    )
    assert s.network == Network(bridge="sbxtest0", subnet="10.214.0.0/24")
    assert s.routers == Routers(port_range=(19000, 19199))
    assert s.owner == "ci"


def test_partial_override_keeps_the_other_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, "network:\n  subnet: 10.99.0.0/16\n")
    assert s.network.subnet == "10.99.0.0/16" and s.network.bridge == "sandbox0"
    assert s.routers.port_range == (18000, 18999)


def test_smallest_allowed_subnet_is_a_28(tmp_path: Path) -> None:
    assert load(tmp_path, "network: {subnet: 10.0.0.0/28}\n").network.subnet == "10.0.0.0/28"


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load(tmp_path, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.network.bridge = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "line", "path", "words"),
    [
        ("network:\n  bridge: x0\n  subnet: 10.0.0.1/24\n", 3, "network.subnet", "host bits set"),
        ("network: {subnet: banana}\n", 1, "network.subnet", "banana"),
        ("# v6 is not supported\nnetwork: {subnet: 'fd00::/64'}\n", 2, "network.subnet", "IPv4"),
        ("network:\n  subnet: 10.0.0.0/29\n", 2, "network.subnet", "/28 or larger"),
        ("network: {bridge: Bad0}\n", 1, "network.bridge", "pattern"),
        ("network: {bridge: abcdefghijklmnop}\n", 1, "network.bridge", "pattern"),
    ],
    ids=["host-bits", "not-a-network", "ipv6", "too-small", "uppercase-bridge", "bridge-too-long"],
)
def test_bad_network_is_located(tmp_path: Path, text: str, line: int, path: str, words: str) -> None:
    issue = only(tmp_path, text)
    assert issue.location.file == "sandbox.yaml" and issue.location.line == line
    assert issue.path == path
    assert words in issue.message
    assert str(issue).startswith(f"sandbox.yaml:{line}")


def test_unknown_key_is_located_with_a_suggestion(tmp_path: Path) -> None:
    issue = only(tmp_path, "# workspace settings\nnetwork: {bridge: sbx0}\nrouter:\n  port_range: [1, 2]\n")
    assert (issue.location.file, issue.location.line) == ("sandbox.yaml", 3)
    assert issue.path == "router" and "unknown key" in issue.message
    assert issue.hint is not None and "routers" in issue.hint


def test_unknown_nested_key_is_located(tmp_path: Path) -> None:
    issue = only(tmp_path, "network:\n  bridge: sbx0\n  sbunet: 10.0.0.0/24\n")
    assert issue.location.line == 3 and issue.path == "network.sbunet"
    assert issue.hint is not None and "subnet" in issue.hint


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = issues(tmp_path, "network:\n  subnet: 10.0.0.1/24\n  bridge: BAD\nextra: 1\n")
    assert sorted((i.location.line, i.path) for i in found) == [
        (2, "network.subnet"),
        (3, "network.bridge"),
        (4, "extra"),
    ]
    text = str(ConfigError(found))
    assert "sandbox.yaml:2" in text and "sandbox.yaml:3" in text and "sandbox.yaml:4" in text


def test_wrong_types_are_located(tmp_path: Path) -> None:
    assert only(tmp_path, "owner: 5\n").path == "owner"
    assert only(tmp_path, "network: [a, b]\n").path == "network"
    assert only(tmp_path, "- a\n").location.line == 1


def test_a_yaml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    issue = only(tmp_path, "network: {bridge: sbx0\n")
    assert issue.location.file == "sandbox.yaml" and issue.location.line is not None


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("routers:\n  port_range: [19199, 19000]\n", 2),
        ("# ports\nrouters:\n  port_range: [0, 70000]\n", 3),
        ("routers: {port_range: [19000, 65536]}\n", 1),
    ],
    ids=["reversed", "zero-and-too-high", "too-high"],
)
def test_bad_port_range_is_located(tmp_path: Path, text: str, line: int) -> None:
    issue = only(tmp_path, text)
    assert issue.location.file == "sandbox.yaml" and issue.location.line == line
    assert issue.path.startswith("routers.port_range")


def test_a_one_port_range_is_allowed(tmp_path: Path) -> None:
    assert load(tmp_path, "routers: {port_range: [19000, 19000]}\n").routers.port_range == (19000, 19000)


@pytest.mark.parametrize("text", ["", "\n", "  \n\n"], ids=["empty", "newline", "blank"])
def test_an_empty_sandbox_yaml_means_defaults(tmp_path: Path, text: str) -> None:
    assert load(tmp_path, text) == Settings()  # it may just mark the workspace root


def test_a_comment_only_sandbox_yaml_means_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "# marks the sandbox workspace\n") == Settings()


def test_router_kind_defaults_to_an_own_nginx(tmp_path: Path) -> None:
    r = load(tmp_path, None).routers
    assert (r.nginx, r.system_conf, r.include_dir, r.stream_include_dir, r.pid_file) == (
        "own",
        "/etc/nginx/nginx.conf",
        "/etc/nginx/conf.d",
        None,
        "/run/nginx.pid",
    )


def test_system_nginx_settings_are_read_and_survive_the_cache(tmp_path: Path) -> None:
    (tmp_path / ".sandbox").mkdir()
    text = (
        "routers:\n  nginx: system\n  system_conf: /srv/nginx/nginx.conf\n  include_dir: /srv/nginx/conf.d\n"
        "  stream_include_dir: /srv/nginx/stream.d\n  pid_file: /srv/nginx/nginx.pid\n"
    )
    first = load(tmp_path, text)
    assert first.routers == Routers(
        nginx="system",
        system_conf="/srv/nginx/nginx.conf",
        include_dir="/srv/nginx/conf.d",
        stream_include_dir="/srv/nginx/stream.d",
        pid_file="/srv/nginx/nginx.pid",
    )
    assert load(tmp_path, None) == first  # from .sandbox/fingerprints/settings.json


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("routers: {nginx: apache}\n", "routers.nginx", "'own', 'system' or 'auto'"),
        ("routers: {include_dir: conf.d}\n", "routers.include_dir", "absolute path"),
        ("routers: {stream_include_dir: stream.d}\n", "routers.stream_include_dir", "absolute path"),
    ],
    ids=["unknown-kind", "relative-include-dir", "relative-stream-dir"],
)
def test_bad_router_kind_settings_are_located(tmp_path: Path, text: str, path: str, words: str) -> None:
    issue = only(tmp_path, text)
    assert issue.location.line == 1 and issue.path == path and words in issue.message


# --- each setting is declared once (sandbox/settings.py); the pydantic schema is derived from it ------


def test_every_setting_has_a_description() -> None:
    undescribed = [key for key, _, f in walk() if not f.metadata.get("description", "").strip()]
    assert undescribed == []


def test_the_schema_accepts_exactly_the_dataclass_fields() -> None:
    from pydantic import BaseModel

    from sandbox.config.settings_schema import SettingsModel

    def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, info in model.model_fields.items():
            out.append(prefix + name)
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                out += keys(info.annotation, f"{prefix}{name}.")
        return out

    assert keys(SettingsModel) == [key for key, _, _ in walk()]
    assert SettingsModel().model_dump() == dataclasses.asdict(Settings())  # same defaults
    described = {key: f.metadata["description"] for key, _, f in walk()}
    assert SettingsModel.model_fields["owner"].description == described["owner"]


def test_settings_are_dataclasses_without_pydantic() -> None:
    code = (
        "import sys; from sandbox.settings import Settings, load_settings; Settings(); "
        "assert 'pydantic' not in sys.modules and 'yaml' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_an_unchanged_sandbox_yaml_is_read_without_pydantic(tmp_path: Path) -> None:
    (tmp_path / ".sandbox").mkdir()
    first = load(tmp_path, "network: {bridge: sbx1}\nrouters: {port_range: [19000, 19010]}\n")
    code = (
        "import sys; from pathlib import Path; from sandbox.settings import load_settings; "
        "from sandbox.workspace import Workspace; "
        f"s = load_settings(Workspace(Path({str(tmp_path)!r}))); "
        "assert 'pydantic' not in sys.modules and 'yaml' not in sys.modules; print(repr(s))"
    )
    root = Path(__file__).parents[2]
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=root, capture_output=True, text=True)
    assert out.stdout.strip() == repr(first)
