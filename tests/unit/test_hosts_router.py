"""The router host's side (sandbox/hostagent/routerops.py): the deploy lock against a second control
machine, and the checks a router config passes before anything is served. Run as the real agent
(`python -m sandbox.hostagent`) with SANDBOX_HOST_ROOT in tmp; no nginx is started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox.routing.remote import RemoteRouter
from sandbox.routing.render import RouterConfig


def agent(root: Path, op: str, request: Any) -> tuple[int, dict[str, Any]]:
    p = subprocess.run(
        [sys.executable, "-m", "sandbox.hostagent", op],
        input=json.dumps(request).encode(),
        capture_output=True,
        env={**os.environ, "SANDBOX_HOST_ROOT": str(root)},
        timeout=60,
        check=False,
    )
    return p.returncode, json.loads(p.stdout.decode().strip().splitlines()[-1])


def lock(root: Path, holder: str, action: str = "take") -> tuple[int, dict[str, Any]]:
    return agent(root, "lock", {"ws": "w1", "env": "prod", "holder": holder, "action": action})


def test_a_second_control_machine_is_locked_out_until_the_first_releases(tmp_path: Path) -> None:
    assert lock(tmp_path, "a/1/w1") == (0, {"ok": None})
    assert lock(tmp_path, "a/1/w1")[0] == 0  # the same holder takes it again (a resumed promotion)
    code, doc = lock(tmp_path, "b/2/w1")
    assert code == 3 and doc["error"] == "LockHeld" and "a/1/w1" in doc["message"], doc
    assert lock(tmp_path, "b/2/w1", "release")[0] == 0  # not the holder: nothing released
    assert lock(tmp_path, "b/2/w1")[0] == 3
    assert lock(tmp_path, "a/1/w1", "release")[0] == 0
    assert lock(tmp_path, "b/2/w1")[0] == 0
    assert json.loads((tmp_path / "locks" / "w1-prod.json").read_text())["holder"] == "b/2/w1"


@pytest.mark.parametrize(
    "request_",
    [
        {"ws": "../x", "env": "prod", "holder": "a"},
        {"ws": "w1", "env": "prod/../../etc", "holder": "a"},
        {"ws": "w1", "env": "PROD", "holder": "a"},
    ],
)
def test_the_lock_refuses_names_that_are_not_names(tmp_path: Path, request_: dict[str, str]) -> None:
    code, doc = agent(tmp_path, "lock", request_)
    assert code == 3 and "error" in doc
    assert not (tmp_path / "locks").exists() or list((tmp_path / "locks").iterdir()) in (
        [],
        [tmp_path / "locks" / ".lock"],
    )


def cfg(**over: Any) -> dict[str, Any]:
    base = {
        "env": "prod",
        "listen": "0.0.0.0",
        "port": 19601,
        "server_name": "_",
        "backends": ["10.250.0.11:20002"],
        "drain_timeout": 5.0,
        "maintenance": None,
        "readonly": False,
        "remote": True,
    }
    return {**base, **over}


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"listen": "0.0.0.0; include /etc/shadow"}, "listen"),
        ({"backends": ["10.0.0.1:80;"]}, "backends"),
        ({"server_name": "a b"}, "server_name"),
        ({"maintenance": ["10.0.0.0/8 ;"]}, "maintenance"),
    ],
)
def test_a_router_config_with_a_hostile_value_is_refused_before_anything_is_written(
    tmp_path: Path, over: dict[str, Any], field: str
) -> None:
    request = {"ws": "w1", "env": "prod", "method": "apply", "cfg": cfg(**over), "text": "events {}\n"}
    code, doc = agent(tmp_path, "router", request)
    assert code == 3 and field in doc["message"], doc
    assert not (tmp_path / "ws" / "w1" / "routers" / "prod" / "nginx.conf").exists()


def test_the_control_side_renders_for_the_hosts_prefix() -> None:
    class Agent:
        name = "lb"

        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def call(self, op: str, *args: str, request: Any = None, timeout: float | None = None) -> Any:
            self.calls.append(request)
            return "/var/lib/sandbox-host/ws/w1/routers/prod" if request["method"] == "prefix" else None

    a = Agent()
    r = RemoteRouter(a, "w1", "prod")  # type: ignore[arg-type]
    c = RouterConfig("prod", "0.0.0.0", 19601, "_", ("10.250.0.11:20002",), remote=True)
    r.apply(c)
    r.apply(c)
    assert [x["method"] for x in a.calls] == ["prefix", "apply", "apply"]  # the prefix is asked once
    text = a.calls[1]["text"]
    assert "pid /var/lib/sandbox-host/ws/w1/routers/prod/nginx.pid;" in text
    assert "keepalive 32" not in text and "proxy_connect_timeout 1s;" in text
