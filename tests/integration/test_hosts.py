"""Production hosts on the test rig (scripts/testhosts.sh): three "machines", each a network and mount
namespace with its own sshd, reached over ssh with strict host-key checking.

prod runs 3 instances spread over the 3 hosts behind this machine's router; the image is shipped by
digest; a promotion under load fails no request; a host cut off mid-promotion stops it (naming the
host) with no failed request, and `--resume` converges once the host is back; bad hosts fail `up`
with the host's name and nothing made anywhere. Traffic goes only to 127.0.0.1 (the router) and to
the rig's addresses (10.250.0.0/24); every env made here is removed at the end.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    Built,
    HostRig,
    build_variant,
    grant_traverse,
    lxc_problem,
    ok,
    require,
    sandbox,
    workspace_like,
)

pytestmark = pytest.mark.integration

ROUTER_PORT = 19590
PROFILE = """\
name: {name}
recipe: web
backend: lxc
hosts:
{hosts}
instances: {instances}
health: {{path: /healthz, interval: 0.5s, timeout: 40s}}
router: {{listen: 127.0.0.1, port: {port}, drain_timeout: 5s}}
"""
HOSTS3 = "\n".join(f"  - {{name: web{i}, ssh: root@10.250.0.1{i}}}" for i in (1, 2, 3))


def profile(ws: Path, name: str, hosts: str, instances: int, port: int) -> None:
    text = PROFILE.format(name=name, hosts=hosts, instances=instances, port=port)
    (ws / "profiles" / f"{name}.yaml").write_text(text)


@pytest.fixture(scope="module")
def hws(built: Built, testhosts: HostRig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A workspace whose prod runs on the rig's 3 hosts, with images v1 (the session build) and v2."""
    require(lxc_problem())
    ws = workspace_like(built, tmp_path_factory.mktemp("hosts"), "ws")
    (ws / "profiles").mkdir()
    (ws / "sandbox.yaml").write_text(
        "network: {bridge: sbxhost0, subnet: 10.218.0.0/24}\n"
        f"hosts: {{ssh_config: {testhosts.ssh_config}, connect_timeout: 3}}\n"
    )
    profile(ws, "prod", HOSTS3, 3, ROUTER_PORT)
    restore = grant_traverse(ws)
    try:
        yield ws
    finally:
        for name in ("prod", "edge", "dock"):
            sandbox(ws, "down", name, timeout=300)
        for d, mode in restore:
            if d.exists():
                d.chmod(mode)


def containers(rig: HostRig, i: int) -> list[str]:
    """The instance dirs sandbox keeps on host i (any workspace)."""
    p = rig.exec(i, "sh", "-c", "ls -d /var/lib/sandbox-host/ws/*/lxc/*/ 2>/dev/null || true")
    return sorted(Path(x).name for x in p.stdout.split())


def probe_counts(text: str) -> list[tuple[int, int, int]]:
    """(requests, non-2xx, errors) of each probe phase printed by the CLI."""
    return [
        (int(a), int(b), int(c))
        for a, b, c in re.findall(r"probe \w+\s+(\d+) requests, (\d+) non-2xx, (\d+) errors", text)
    ]


def test_host_prepare_installs_only_what_is_missing_and_names_a_host_it_cannot_reach(
    hws: Path, testhosts: HostRig
) -> None:
    """The rig's hosts share this machine's packages: prepare finds every one installed (no apt, so
    no package index is needed), checks the engine, and reports the unreachable host by name."""
    hosts = "  - {name: web1, ssh: root@10.250.0.11}\n  - {name: ghost, ssh: root@10.250.0.19}"
    profile(hws, "edge", hosts, 2, ROUTER_PORT + 1)
    r = sandbox(hws, "host", "prepare", "edge", "--json", timeout=300)
    assert r.code == 1, r
    report = {h["host"]: h for h in r.json["hosts"]}
    assert report["web1"]["ok"] and report["web1"]["installed"] == [], report
    assert report["web1"]["detail"] == "every package was there; ready", report
    assert not report["ghost"]["ok"] and "unreachable" in report["ghost"]["detail"], report
    profile(hws, "edge", "  - {name: web1, ssh: root@10.250.0.11}", 1, ROUTER_PORT + 1)
    assert sandbox(hws, "host", "prepare", "edge").code == 0


def test_bad_hosts_fail_clearly_and_make_nothing(hws: Path, testhosts: HostRig, tmp_path: Path) -> None:
    # a target that ssh would read as an option: the profile's line and key, nothing contacted
    profile(hws, "edge", "  - {name: web1, ssh: -oProxyCommand=touch}", 1, ROUTER_PORT + 1)
    r = sandbox(hws, "up", "edge")
    assert r.code != 0 and "looks like an ssh option" in r.stderr and "edge.yaml:5" in r.stderr, r.stderr
    # a host that does not exist: up names it and leaves nothing on the hosts that answered
    before = [containers(testhosts, i) for i in (1, 2)]
    hosts = "  - {name: web1, ssh: root@10.250.0.11}\n  - {name: ghost, ssh: root@10.250.0.19}"
    profile(hws, "edge", hosts, 2, ROUTER_PORT + 1)
    t0 = time.monotonic()
    r = sandbox(hws, "up", "edge")
    assert r.code != 0 and "host ghost" in r.stderr and "unreachable" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 30
    assert all(e["name"] != "edge" for e in ok(sandbox(hws, "ls", "--json")))
    assert [containers(testhosts, i) for i in (1, 2)] == before
    # a router host that does not answer: the same, named
    text = PROFILE.format(
        name="edge", hosts="  - {name: web1, ssh: root@10.250.0.11}", instances=1, port=19602
    )
    (hws / "profiles" / "edge.yaml").write_text(
        text.replace(
            "router: {listen: 127.0.0.1,", "router: {host: lb, ssh: root@10.250.0.19, listen: 0.0.0.0,"
        )
    )
    r = sandbox(hws, "up", "edge")
    assert r.code != 0 and "host lb" in r.stderr and "unreachable" in r.stderr, r.stderr
    assert all(e["name"] != "edge" for e in ok(sandbox(hws, "ls", "--json")))
    assert [containers(testhosts, i) for i in (1, 2)] == before
    # an unknown host key: refused, with the key's fingerprint shown, never accepted
    cfg = tmp_path / "ssh_config"
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    cfg.write_text(testhosts.ssh_config.read_text().replace(str(testhosts.dir / "known_hosts"), str(empty)))
    (hws / "sandbox.yaml").write_text(
        (hws / "sandbox.yaml").read_text().replace(str(testhosts.ssh_config), str(cfg))
    )
    try:
        profile(hws, "edge", "  - {name: web1, ssh: root@10.250.0.11}", 1, ROUTER_PORT + 1)
        r = sandbox(hws, "host", "check", "edge")
        assert r.code != 0 and "not in known_hosts" in r.stdout + r.stderr and "SHA256:" in r.stdout, r.stdout
        assert empty.read_text() == ""
    finally:
        (hws / "sandbox.yaml").write_text(
            (hws / "sandbox.yaml").read_text().replace(str(cfg), str(testhosts.ssh_config))
        )
        (hws / "profiles" / "edge.yaml").unlink()


def test_prod_on_three_hosts_promotes_with_no_failed_request(
    hws: Path, testhosts: HostRig, built: Built
) -> None:
    check = sandbox(hws, "host", "check", "prod", "--json")
    assert check.code == 0, check.stdout + check.stderr
    assert [h["host"] for h in check.json["hosts"]] == ["web1", "web2", "web3"]
    ok(sandbox(hws, "up", "prod", "--wait", "--json", timeout=600))
    s = ok(sandbox(hws, "status", "prod", "--json"))
    assert sorted(i["host"] for i in s["instances"]) == ["web1", "web2", "web3"]
    assert all(i["state"] == "running" and i["health"] == "healthy" for i in s["instances"]), s
    for i, n in zip((1, 2, 3), ("prod-0", "prod-1", "prod-2"), strict=True):
        assert n in containers(testhosts, i)
    # every host holds the image's blobs, verified by digest
    for i in (1, 2, 3):
        assert (
            testhosts.exec(
                i, "test", "-f", f"/var/lib/sandbox-host/store/manifests/{built.digest[7:]}.json"
            ).returncode
            == 0
        )
    r = sandbox(hws, "exec", "prod", "-i", "1", "--", "cat", "/etc/hostname")
    assert r.code == 0 and "prod-1" in r.stdout, r
    # v2: only the app layer differs; shipped, then swapped one instance at a time across hosts
    v2 = build_variant(hws, "v2")
    r = sandbox(
        hws, "promote", v2, "--to", "prod", "--force", "--yes", "--probe", "30", "--json", timeout=600
    )
    result = ok(r)
    assert result["state"] == "done" and len(result["per_backend"]) == 3, result
    for phase, rep in result["probe"].items():
        assert rep["non_2xx"] == 0 and rep["errors"] == 0 and rep["requests"] > 0, (phase, rep)
    s = ok(sandbox(hws, "status", "prod", "--json"))
    assert s["image"] == v2 and sorted(i["host"] for i in s["instances"]) == ["web1", "web2", "web3"]


def test_a_host_cut_off_mid_promotion_stops_it_and_resume_converges(hws: Path, testhosts: HostRig) -> None:
    s = ok(sandbox(hws, "status", "prod", "--json"))
    if s["state"] != "running":
        pytest.fail(f"prod is not running (the previous test failed?): {s['state']}")
    history = ok(sandbox(hws, "history", "prod", "--json"))
    back_to = next(d["from_image"] for d in history if d["state"] == "done")
    cut_at: list[float] = []

    def cut() -> None:
        """Cut web2 once the first swap has started (on web1): the next one is web2's."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            h = sandbox(hws, "history", "prod", "--json")
            if (
                h.code == 0
                and len(h.json) > len(history)
                and any(st["step"] == "started" for st in h.json[0]["steps"])
            ):
                break
            time.sleep(0.3)
        testhosts.cut(2)
        cut_at.append(time.time())

    killer = threading.Thread(target=cut)
    killer.start()
    try:
        r = sandbox(hws, "promote", back_to, "--to", "prod", "--force", "--yes", "--probe", "30", timeout=600)
        killer.join()
        assert r.code != 0, r.stdout
        assert "host web2" in r.stderr and "host drain prod web2" in r.stderr, r.stderr
        last = ok(sandbox(hws, "history", "prod", "--json"))[0]
        failed = [st for st in last["steps"] if st["step"] == "host failed"]
        assert failed and failed[0]["host"] == "web2", last["steps"]
        assert failed[0]["ts"] - cut_at[0] < 40, "the promotion must stop within the health timeout (40 s)"
        counts = probe_counts(r.stdout + r.stderr)
        assert len(counts) == 3 and all(nx == 0 and err == 0 and n > 0 for n, nx, err in counts), counts
        # traffic goes only to instances that answer: the router still serves
        st = ok(sandbox(hws, "status", "prod", "--json"))
        assert any(i.get("host") == "web2" and i["state"] == "unreachable" for i in st["instances"]) or all(
            i.get("host") != "web2" for i in st["instances"]
        )
    finally:
        with contextlib.suppress(AssertionError):
            testhosts.heal(2)
    time.sleep(1.0)
    r2 = sandbox(hws, "promote", "--to", "prod", "--resume", "--probe", "30", "--json", timeout=600)
    res = ok(r2)
    assert res["state"] == "done", res
    for phase, rep in res["probe"].items():
        assert rep["non_2xx"] == 0 and rep["errors"] == 0, (phase, rep)
    s = ok(sandbox(hws, "status", "prod", "--json"))
    assert s["image"] == back_to
    assert sorted(i["host"] for i in s["instances"]) == ["web1", "web2", "web3"], s["instances"]
    assert all(i["health"] == "healthy" for i in s["instances"])
    # a host that will not come back: `host drain` forgets its instance without contacting it; the
    # router serves from the others, and gc (which still visits the profile's hosts) removes the
    # instance the state no longer knows once the host answers again
    on3 = next(i["name"] for i in s["instances"] if i["host"] == "web3")
    gone = ok(sandbox(hws, "host", "drain", "prod", "web3", "--yes", "--json"))["forgotten"]
    assert gone == [on3], (gone, on3)
    s = ok(sandbox(hws, "status", "prod", "--json"))
    assert sorted(i["host"] for i in s["instances"]) == ["web1", "web2"], s["instances"]
    for _ in range(6):
        with urllib.request.urlopen(f"http://127.0.0.1:{ROUTER_PORT}/healthz", timeout=10) as resp:
            assert resp.status == 200
    assert on3 in containers(testhosts, 3)
    ok(sandbox(hws, "gc", "--json", timeout=300))
    assert on3 not in containers(testhosts, 3)
    ok(sandbox(hws, "down", "prod", timeout=300))
    for i in (1, 2, 3):
        left = [c for c in containers(testhosts, i) if c.startswith("prod-")]
        assert left == [], (i, left)


def test_router_on_its_own_host(hws: Path, testhosts: HostRig, built: Built) -> None:
    """nginx on host 3 in front of instances on hosts 1 and 2; a second control machine is locked out."""
    hosts = "  - {name: web1, ssh: root@10.250.0.11}\n  - {name: web2, ssh: root@10.250.0.12}"
    text = PROFILE.format(name="edge", hosts=hosts, instances=2, port=19601).replace(
        "router: {listen: 127.0.0.1,", "router: {host: lb, ssh: root@10.250.0.13, listen: 0.0.0.0,"
    )
    (hws / "profiles" / "edge.yaml").write_text(text)
    try:
        v = ok(sandbox(hws, "up", "edge", "--wait", "--json", timeout=600))
        assert v["url"] == "http://10.250.0.13:19601/", v["url"]
        assert sorted(i["host"] for i in v["instances"]) == ["web1", "web2"]
        routers = testhosts.exec(3, "sh", "-c", "ls /var/lib/sandbox-host/ws/*/routers/").stdout.split()
        assert routers == ["edge"], routers
        assert containers(testhosts, 3) == [] or all(
            not c.startswith("edge-") for c in containers(testhosts, 3)
        )
        v3 = build_variant(hws, "edge")
        # another control machine holds the lock: a promotion is refused and changes nothing
        lock = "/var/lib/sandbox-host/locks"
        ws_id = testhosts.exec(3, "sh", "-c", "ls /var/lib/sandbox-host/ws/").stdout.split()[0]
        testhosts.exec(
            3,
            "sh",
            "-c",
            f'mkdir -p {lock} && echo \'{{"holder": "other/1/x", "ts": 1}}\' > {lock}/{ws_id}-edge.json',
        )
        r = sandbox(hws, "promote", v3, "--to", "edge", "--force", "--yes")
        assert r.code != 0 and "another control machine" in r.stderr and "other/1/x" in r.stderr, r.stderr
        testhosts.exec(3, "rm", "-f", f"{lock}/{ws_id}-edge.json")
        # a promotion through the remote router under load fails no request, and releases the lock
        res = ok(
            sandbox(
                hws, "promote", v3, "--to", "edge", "--force", "--yes", "--probe", "30", "--json", timeout=600
            )
        )
        assert res["state"] == "done", res
        for phase, rep in res["probe"].items():
            assert rep["non_2xx"] == 0 and rep["errors"] == 0 and rep["requests"] > 0, (phase, rep)
        assert testhosts.exec(3, "sh", "-c", f"ls {lock}").stdout.split() == []
    finally:
        ok(sandbox(hws, "down", "edge", timeout=300))
        (hws / "profiles" / "edge.yaml").unlink()
    assert testhosts.exec(3, "sh", "-c", "ls /var/lib/sandbox-host/ws/*/routers/").stdout.split() == []


def docker_containers(rig: HostRig, i: int) -> list[str]:
    """The names of the docker containers on host i (its own engine)."""
    p = rig.exec(i, "docker", "-H", "unix:///var/run/docker.sock", "ps", "-a", "--format", "{{.Names}}")
    assert p.returncode == 0, p.stderr
    return sorted(p.stdout.split())


def test_docker_on_two_hosts_ships_loads_and_promotes_with_no_failed_request(
    hws: Path, testhosts: HostRig
) -> None:
    """The docker engine of each host, spoken to over the forwarded socket: the image is shipped by
    digest and loaded there by the host agent, apps are published on the hosts' addresses, and a
    promotion under load fails no request."""
    require(None if shutil.which("dockerd") else "dockerd is not installed (apt-get install docker.io)")
    testhosts.script("docker", "1", "2", timeout=120)
    hosts = "  - {name: web1, ssh: root@10.250.0.11}\n  - {name: web2, ssh: root@10.250.0.12}"
    text = PROFILE.format(name="dock", hosts=hosts, instances=2, port=ROUTER_PORT + 3)
    (hws / "profiles" / "dock.yaml").write_text(text.replace("backend: lxc", "backend: docker"))
    try:
        check = ok(sandbox(hws, "host", "check", "dock", "--json"))
        items = {c["item"]: c for h in check["hosts"] for c in h["checks"] if h["host"] == "web1"}
        assert items["docker"]["ok"] and "docker engine" in items["docker"]["detail"], items
        assert "lxc" not in items
        v = ok(sandbox(hws, "up", "dock", "--wait", "--json", timeout=600))
        assert sorted(i["host"] for i in v["instances"]) == ["web1", "web2"], v["instances"]
        assert [i["endpoint"].split(":")[0] for i in v["instances"]] == ["10.250.0.11", "10.250.0.12"]
        # each instance's slot in the workspace's subnet (it fixes the port) is its own
        assert len({i["address"] for i in v["instances"]}) == 2, v["instances"]
        assert docker_containers(testhosts, 1) == ["dock-0"] and docker_containers(testhosts, 2) == ["dock-1"]
        s = ok(sandbox(hws, "status", "dock", "--json"))
        assert all(i["health"] == "healthy" for i in s["instances"]), s
        r = sandbox(hws, "exec", "dock", "-i", "1", "--", "cat", "/etc/hostname")
        assert r.code == 0 and "dock-1" in r.stdout, r
        # the app's log, read by the local docker CLI through the forwarded socket
        r = sandbox(hws, "logs", "dock", "-i", "0", "-n", "20")
        assert r.code == 0 and (r.stdout + r.stderr).strip(), r
        v2 = build_variant(hws, "dock")
        res = ok(
            sandbox(
                hws, "promote", v2, "--to", "dock", "--force", "--yes", "--probe", "30", "--json", timeout=600
            )
        )
        assert res["state"] == "done", res
        for phase, rep in res["probe"].items():
            assert rep["non_2xx"] == 0 and rep["errors"] == 0 and rep["requests"] > 0, (phase, rep)
        s = ok(sandbox(hws, "status", "dock", "--json"))
        assert s["image"] == v2 and sorted(i["host"] for i in s["instances"]) == ["web1", "web2"]
        # the new image was loaded into each host's engine from the blobs shipped there
        for i in (1, 2):
            p = testhosts.exec(
                i,
                "docker",
                "-H",
                "unix:///var/run/docker.sock",
                "images",
                "--filter",
                f"label=io.sandbox.digest={v2}",
                "-q",
            )
            assert p.returncode == 0 and p.stdout.strip(), (i, p.stdout, p.stderr)
        # gc visits every host of the workspace's envs and profiles (docker and lxc ones) and keeps
        # what the state knows
        g = ok(sandbox(hws, "gc", "--images", "--json", timeout=300))
        assert g["skipped_hosts"] == [] and not [x for x in g["removed_instances"] if "dock-" in x], g
        assert sorted(docker_containers(testhosts, 1) + docker_containers(testhosts, 2)) == [
            "dock-2",
            "dock-3",
        ]
    finally:
        ok(sandbox(hws, "down", "dock", timeout=300))
        (hws / "profiles" / "dock.yaml").unlink()
    assert docker_containers(testhosts, 1) == [] and docker_containers(testhosts, 2) == []
