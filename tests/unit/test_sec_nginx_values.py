"""Issue 10, class 3: no value from a profile, the state or a command line changes the structure of a
generated nginx config. Every field is fed `;`, `{`, `}`, quotes, `#`, `$` and newlines: the profile
refuses it at load (file:line), and the renderer refuses it again (RouterError naming the field)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sandbox.config import load_profile
from sandbox.config.resolved import ResolvedProfile
from sandbox.errors import ConfigError
from sandbox.routing import PortForward, RouterConfig, RouterError
from sandbox.routing.render import render_include, render_nginx_conf

PAYLOADS = [
    "x;",
    "x{",
    "x}",
    'x"',
    "x'",
    "x#",
    "$x",
    "x\n",
    "127.0.0.1;\n}\nserver { listen 9999; access_log /etc/cron.d/x; }",
    "10.0.0.0/8 0;\n}\nserver { access_log /etc/cron.d/x; }\ngeo $x $y {",
]
PREFIX = Path("/ws/.sandbox/routers/prod")
GOOD = RouterConfig(
    "prod",
    "127.0.0.1",
    18000,
    "_",
    ("10.0.0.2:8000",),
    maintenance=("10.0.0.0/8",),
    ports=(PortForward("127.0.0.1", 2222, "tcp", ("10.0.0.2:22",)),),
)


def variants(payload: str) -> list[tuple[str, RouterConfig]]:
    fwd = GOOD.ports[0]
    return [
        ("env", dataclasses.replace(GOOD, env=payload)),
        ("listen", dataclasses.replace(GOOD, listen=payload)),
        ("server_name", dataclasses.replace(GOOD, server_name=payload)),
        ("backends[0]", dataclasses.replace(GOOD, backends=(payload,))),
        ("backends[0]", dataclasses.replace(GOOD, backends=(f"10.0.0.2:{payload}",))),
        ("maintenance[0]", dataclasses.replace(GOOD, maintenance=(payload,))),
        ("readonly", dataclasses.replace(GOOD, readonly=payload)),  # type: ignore[arg-type]
        ("ports[0].address", dataclasses.replace(GOOD, ports=(dataclasses.replace(fwd, address=payload),))),
        ("ports[0].proto", dataclasses.replace(GOOD, ports=(dataclasses.replace(fwd, proto=payload),))),
        (
            "ports[0].backends[0]",
            dataclasses.replace(GOOD, ports=(dataclasses.replace(fwd, backends=(payload,)),)),
        ),
    ]


def test_a_good_config_renders() -> None:
    assert 'dict:add("mode", "maintenance on allow 10.0.0.0/8 readonly off")' in render_nginx_conf(
        GOOD, PREFIX
    )
    assert "of workspace /ws;" in render_include(GOOD, PREFIX, "http", "/ws")


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_renderer_refuses_every_field_that_could_carry_nginx_syntax(payload: str) -> None:
    for field, cfg in variants(payload):
        for render in (
            lambda c: render_nginx_conf(c, PREFIX),
            lambda c: render_include(c, PREFIX, "http", "/ws"),
            lambda c: render_include(c, PREFIX, "stream", "/ws"),
        ):
            with pytest.raises(RouterError) as e:
                render(cfg)
            assert field in e.value.message, (field, e.value.message)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_renderer_refuses_paths_and_accounts_that_could_carry_nginx_syntax(payload: str) -> None:
    with pytest.raises(RouterError, match="prefix"):
        render_nginx_conf(GOOD, Path("/ws/" + payload))
    with pytest.raises(RouterError, match="user"):
        render_nginx_conf(GOOD, PREFIX, user=payload)
    with pytest.raises(RouterError, match="group"):
        render_nginx_conf(GOOD, PREFIX, group=payload)
    # the workspace goes into the include file's first line, which says whose file it is
    with pytest.raises(RouterError, match="workspace"):
        render_include(GOOD, PREFIX, "http", "/ws/" + payload)
    with pytest.raises(RouterError, match="prefix"):
        render_include(GOOD, Path("/ws/" + payload), "http", "/ws")


def test_the_mode_reaches_the_config_only_as_canonical_networks() -> None:
    """The mode is the one value a Lua string in the file carries (the dict's initial value): only
    `maintenance on|off`, `allow NETWORK` and `readonly on|off`, each NETWORK as `ipaddress` prints it."""
    import re

    cfg = dataclasses.replace(GOOD, maintenance=("10.0.0.5/8", "::ffff:1.2.3.4", "192.0.2.7"), readonly=True)
    line = next(ln for ln in render_nginx_conf(cfg, PREFIX).splitlines() if 'dict:add("mode", ' in ln)
    value = line.split('"')[3]
    assert value == "maintenance on allow 10.0.0.0/8 allow ::ffff:102:304/128 allow 192.0.2.7/32 readonly on"
    assert re.fullmatch(r"[a-z0-9 ./:]+", value)
    with pytest.raises(RouterError, match="maintenance: 257 addresses"):
        render_nginx_conf(
            dataclasses.replace(GOOD, maintenance=tuple(f"10.0.{i // 256}.{i % 256}" for i in range(257))),
            PREFIX,
        )
    with pytest.raises(RouterError, match="maintenance"):
        render_nginx_conf(dataclasses.replace(GOOD, maintenance="10.0.0.0/8"), PREFIX)  # type: ignore[arg-type]


def test_the_renderer_refuses_odd_numbers() -> None:
    for bad in (
        dataclasses.replace(GOOD, port=0),
        dataclasses.replace(GOOD, port=True),
        dataclasses.replace(GOOD, drain_timeout=float("nan")),
        dataclasses.replace(GOOD, ports=(dataclasses.replace(GOOD.ports[0], host=70000),)),
        dataclasses.replace(GOOD, backends=("10.0.0.2:99999",)),
    ):
        with pytest.raises(RouterError):
            render_nginx_conf(bad, PREFIX)


# -- at profile load: file:line ---------------------------------------------------------------------


def profile_issue(tmp_path: Path, body: dict[str, Any]) -> tuple[str, int | None, str]:
    import json

    path = tmp_path / "profiles" / "prod.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    # JSON is YAML: every payload (quotes, newlines) is written exactly
    text = "name: prod\nrecipe: web\n" + "\n".join(f"{k}: {json.dumps(v)}" for k, v in body.items()) + "\n"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as e:
        load_profile(path, display_root=tmp_path)
    issue = e.value.issues[0]
    return issue.location.file, issue.location.line, issue.path


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_profile_refuses_each_payload_with_file_and_line(tmp_path: Path, payload: str) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"promotion": {"allow": ["10.0.0.1", payload]}}, "promotion.allow[1]"),
        ({"router": {"server_name": payload}}, "router.server_name"),
        ({"router": {"listen": payload}}, "router.listen"),
        ({"ports": [{"host": 2222, "container": 22, "address": payload}]}, "ports[0].address"),
    ]
    for body, where in cases:
        file, line, path = profile_issue(tmp_path, body)
        assert (file, line, path) == ("profiles/prod.yaml", 3, where)


def test_the_profile_refuses_more_allowed_addresses_than_the_router_takes(tmp_path: Path) -> None:
    file, line, where = profile_issue(
        tmp_path, {"promotion": {"allow": [f"10.0.{i // 256}.{i % 256}" for i in range(257)]}}
    )
    assert (file, line, where) == ("profiles/prod.yaml", 3, "promotion.allow")


def test_allow_is_typed_at_load_and_json_friendly_in_the_resolved_profile(tmp_path: Path) -> None:
    import ipaddress

    path = tmp_path / "profiles" / "prod.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("name: prod\nrecipe: web\npromotion: {allow: [10.0.0.5, 10.1.2.3/8, '::1']}\n")
    loaded = load_profile(path, display_root=tmp_path)
    assert loaded.profile.promotion.allow == [
        ipaddress.ip_network("10.0.0.5/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    ]
    data = loaded.profile.model_dump(mode="json")
    resolved = ResolvedProfile.from_data(data)
    assert resolved.promotion.allow == ("10.0.0.5/32", "10.0.0.0/8", "::1/128")
    assert ResolvedProfile.from_data(resolved.to_data()) == resolved
    # a stored profile that was tampered with is refused when it is read back
    data["promotion"]["allow"] = ["10.0.0.0/8 0;\n}"]
    with pytest.raises(ValueError):
        ResolvedProfile.from_data(data)
