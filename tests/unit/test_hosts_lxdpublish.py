"""LXD instances published by the host agent's DNAT rules (sandbox/hostagent/lxdpublish.py), against
the fake LXD of test_hosts_lxdops.py (the rules themselves: test_publish.py; the real LXD:
tests/integration/test_lxd_hosts.py): `lxd-publish` publishes only to the caller's workspace's
instance at its routed NIC's address and records it, removes rules and record; lxd-trust first
replaces an earlier version's proxy device by DNAT, removes every proxy device (LXD refuses to block
them while one is left), makes recorded rules again (a reboot) and drops those of instances gone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sandbox.backends.lxdconfig import PROJECT_CONFIG
from sandbox.hostagent import lxdops, lxdpublish
from sandbox.hostagent.instancereq import BadRequest
from tests.unit.test_hosts_lxdops import Lxd, client_pem, lxd

__all__ = ["lxd"]  # a fixture of test_hosts_lxdops.py

WS = "ws1@ctl"


def instance(name: str, address: str = "10.224.0.2", ws: str = WS, **devices: Any) -> dict[str, Any]:
    nic = {"type": "nic", "nictype": "routed", "ipv4.address": address, "name": "eth0"}
    return {
        "name": name,
        "architecture": "x86_64",
        "config": {"user.sandbox.workspace": ws},
        "devices": {"eth0": nic, **devices},
        "ephemeral": False,
        "profiles": ["default"],
        "stateful": False,
        "description": "",
    }


@pytest.fixture
def rules(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, str, int]]:
    """The DNAT rules the agent made, by instance (publish.py's calls, faked)."""
    made: dict[str, tuple[int, str, int]] = {}
    monkeypatch.setattr(lxdpublish, "publish", lambda n, p, a, ap: made.__setitem__(n, (p, a, ap)))
    monkeypatch.setattr(lxdpublish, "remove", lambda n: made.pop(n, None))
    return made


def call(monkeypatch: pytest.MonkeyPatch, request: Any) -> Any:
    monkeypatch.setattr(lxdpublish, "read_request", lambda: request)
    return lxdpublish.lxd_publish([])


def records(tmp_path: Path) -> dict[str, Any]:
    return {p.stem: json.loads(p.read_text()) for p in (tmp_path / "host" / "lxd-published").glob("*.json")}


def test_publish_goes_only_to_the_workspaces_instance_at_its_nics_address_and_is_recorded(
    lxd: Lxd, rules: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lxd.projects["sandbox"] = {}
    lxd.instances = {"web-0": instance("web-0"), "other-0": instance("other-0", "10.224.0.3", ws="ws2@ctl")}
    good = {"name": "web-0", "workspace": WS, "port": 20002, "address": "10.224.0.2", "app_port": 8000}
    for bad, what in (
        ({**good, "name": "../x"}, "bad name"),
        ({**good, "workspace": None}, "bad workspace"),
        ({**good, "port": 70000}, "bad port"),
        ({**good, "app_port": True}, "bad port"),
        ({**good, "address": "10.224.0.9"}, "does not have address"),  # not the NIC's: never DNAT'ed there
        ({**good, "address": "10.224.0.02"}, "does not have address"),
        ({**good, "name": "other-0", "address": "10.224.0.3"}, "not this workspace's"),
    ):
        with pytest.raises(BadRequest, match=what):
            call(monkeypatch, bad)
    with pytest.raises(lxdops.LxdEngineError, match="no instance"):
        call(monkeypatch, {**good, "name": "web-9"})
    assert rules == {} and records(tmp_path) == {}
    assert call(monkeypatch, good) == {"published": "20002 -> 10.224.0.2:8000"}
    assert call(monkeypatch, good) == {"published": "20002 -> 10.224.0.2:8000"}  # idempotent
    assert rules == {"web-0": (20002, "10.224.0.2", 8000)}
    assert records(tmp_path) == {"web-0": {"port": 20002, "address": "10.224.0.2", "app_port": 8000}}
    rules["other-0"] = (20003, "10.224.0.3", 8000)  # another workspace's: left alone
    assert call(monkeypatch, {"name": "other-0", "workspace": WS, "remove": True}) == {"removed": False}
    assert rules.pop("other-0")
    assert call(monkeypatch, {"name": "web-0", "workspace": WS, "remove": True}) == {"removed": True}
    assert rules == {} and records(tmp_path) == {}
    del lxd.instances["web-0"]  # gone already: removing its rules is no error
    assert call(monkeypatch, {"name": "web-0", "workspace": WS, "remove": True}) == {"removed": True}


def test_trust_replaces_old_proxy_devices_by_dnat_before_blocking_them_and_settles_records(
    lxd: Lxd, rules: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old = {"type": "proxy", "bind": "host", "listen": "tcp:0.0.0.0:20002", "connect": "tcp:10.224.0.2:8000"}
    hostile = {**old, "listen": "tcp:0.0.0.0:22", "connect": "tcp:10.224.0.3:22"}  # the host's ssh: never
    stray = {
        "type": "proxy",
        "bind": "instance",
        "listen": "unix:/s",
        "connect": "unix:/var/lib/lxd/unix.socket",
    }
    lxd.projects["sandbox"] = {**PROJECT_CONFIG, "restricted.devices.proxy": "allow"}
    lxd.profiles["sandbox"] = {}
    lxd.instances = {
        "web-0": instance("web-0", **{"sbx-publish": old}),
        "web-1": instance("web-1", "10.224.0.3", **{"sbx-publish": hostile, "x": stray}),
        "web-2": instance("web-2", "10.224.0.4"),  # published; its rules lost in a reboot
    }
    d = tmp_path / "host" / "lxd-published"
    d.mkdir(parents=True)
    (d / "web-2.json").write_text(json.dumps({"port": 20004, "address": "10.224.0.4", "app_port": 8000}))
    (d / "gone-0.json").write_text(json.dumps({"port": 20009, "address": "10.224.0.9", "app_port": 8000}))
    rules["gone-0"] = (20009, "10.224.0.9", 8000)
    pem, _ = client_pem()
    request = {"cert": pem, "name": "sandbox@ctl", "address": "127.0.0.1"}
    monkeypatch.setattr(lxdops, "read_request", lambda: request)
    out = lxdops.lxd_trust([])
    assert {k: sorted(v) for k, v in out["published"].items()} == {
        "republished": ["web-0", "web-2"],
        "unpublished": ["gone-0"],
        "proxies_removed": ["web-0", "web-1"],
    }
    assert rules == {"web-0": (20002, "10.224.0.2", 8000), "web-2": (20004, "10.224.0.4", 8000)}
    assert set(records(tmp_path)) == {"web-0", "web-2"}
    for inst in lxd.instances.values():
        assert [dev["type"] for dev in inst["devices"].values()] == ["nic"], inst
    assert lxd.projects["sandbox"]["restricted.devices.proxy"] == "block"
    puts = [i for i, r in enumerate(lxd.requests) if r[0] == "PUT"]
    patch = lxd.requests.index(("PATCH", "/1.0/projects/sandbox"))
    assert len(puts) == 2 and max(puts) < patch  # the proxies went before the project blocked them
