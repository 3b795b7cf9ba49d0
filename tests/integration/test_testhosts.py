"""The multi-host test rig (scripts/testhosts.sh): each test host answers over ssh with strict host-key
checking, keeps its own /var/lib/sandbox-host, /var/lib/lxc, nginx dirs and /run, reaches the other
hosts, and can be cut off the network or lose its sshd, and come back.

Traffic goes only to the rig's own addresses (10.250.0.0/24, namespaces this session made)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import HostRig, require

pytestmark = pytest.mark.integration

PRIVATE = ("/var/lib/sandbox-host", "/var/lib/lxc", "/etc/nginx", "/var/log/nginx", "/run")


def test_hosts_json_names_every_host(testhosts: HostRig) -> None:
    assert [h["name"] for h in testhosts.hosts] == ["sbxh1", "sbxh2", "sbxh3"]
    assert [h["address"] for h in testhosts.hosts] == ["10.250.0.11", "10.250.0.12", "10.250.0.13"]
    assert [h["ssh"] for h in testhosts.hosts] == ["root@10.250.0.11", "root@10.250.0.12", "root@10.250.0.13"]
    assert all(isinstance(h["sshd_pid"], int) for h in testhosts.hosts)


def test_ssh_with_strict_host_key_checking(testhosts: HostRig) -> None:
    for i, h in enumerate(testhosts.hosts, 1):
        p = testhosts.ssh(h["name"], "true")
        assert p.returncode == 0, p.stderr
        p = testhosts.ssh(h["ssh"], "hostname")
        assert (p.returncode, p.stdout.strip()) == (0, f"sbxh{i}"), p.stderr
    # the check is real: with no known key the connection is refused, never accepted silently
    p = testhosts.ssh("sbxh1", "true", options=("-o", "UserKnownHostsFile=/dev/null"))
    assert p.returncode == 255
    assert "Host key verification failed" in p.stderr


@pytest.mark.parametrize("path", PRIVATE)
def test_a_hosts_dirs_are_its_own(testhosts: HostRig, path: str) -> None:
    name = f"probe-{uuid.uuid4().hex}"
    p = testhosts.ssh("sbxh1", "sh", "-c", f"'echo sbxh1 > {path}/{name}'")
    assert p.returncode == 0, p.stderr
    try:
        assert not Path(path, name).exists(), "a test host wrote to this machine's own path"
        assert testhosts.ssh("sbxh1", "cat", f"{path}/{name}").stdout == "sbxh1\n"
        p = testhosts.ssh("root@10.250.0.12", "test", "-e", f"{path}/{name}")
        assert p.returncode == 1, "another host sees the file"
    finally:
        testhosts.ssh("sbxh1", "rm", "-f", f"{path}/{name}")


def test_a_host_starts_from_this_machines_nginx_config(testhosts: HostRig) -> None:
    require(None if Path("/etc/nginx/nginx.conf").exists() else "no nginx here to copy the config of")
    p = testhosts.ssh("sbxh2", "cat", "/etc/nginx/nginx.conf")
    assert p.returncode == 0, p.stderr
    assert p.stdout == Path("/etc/nginx/nginx.conf").read_text()


def test_exec_enters_the_hosts_namespaces(testhosts: HostRig) -> None:
    p = testhosts.exec(3, "hostname")
    assert (p.returncode, p.stdout.strip()) == (0, "sbxh3"), p.stderr
    # its own sysfs (LXC looks up bridges there) and its own /var/lib/lxc
    p = testhosts.exec(3, "ls", "/sys/class/net")
    own = set(p.stdout.split())
    # its eth0 and lo; none of this machine's links (other tests may have made bridges and veths
    # inside the host: sandbox's own, created there)
    assert {"eth0", "lo"} <= own and "sbxtb0" not in own and not any(n.endswith("-v") for n in own), own
    name = f"probe-{uuid.uuid4().hex}"
    assert testhosts.exec(3, "touch", f"/var/lib/lxc/{name}").returncode == 0
    assert (testhosts.dir / "sbxh3" / "lxc" / name).exists()
    assert not Path("/var/lib/lxc", name).exists()
    assert testhosts.exec(3, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"


def test_hosts_reach_each_other(testhosts: HostRig) -> None:
    """Across the bridge, whatever this machine's FORWARD policy (docker sets DROP)."""
    code = (
        "import socket; s = socket.create_connection(('10.250.0.13', 22), timeout=3); "
        "print(s.recv(64).decode().strip())"
    )
    p = testhosts.exec(1, "python3", "-c", code, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("SSH-2.0-")


def test_a_cut_host_is_unreachable_until_healed(testhosts: HostRig) -> None:
    testhosts.cut(1)
    try:
        t0 = time.monotonic()
        p = testhosts.ssh("sbxh1", "true", timeout=30)
        elapsed = time.monotonic() - t0
        assert p.returncode == 255, "a cut host answered"
        assert elapsed < 10, f"ssh to a cut host took {elapsed:.1f}s to fail"
        assert testhosts.ssh("sbxh2", "true").returncode == 0, "cutting one host cut another"
    finally:
        testhosts.heal(1)
    p = testhosts.ssh("sbxh1", "true")
    assert p.returncode == 0, p.stderr


def test_sshd_stops_and_starts_again(testhosts: HostRig) -> None:
    testhosts.stop_sshd(2)
    try:
        p = testhosts.ssh("sbxh2", "true")
        assert p.returncode == 255
        assert "Connection refused" in p.stderr
    finally:
        testhosts.start_sshd(2)
    p = testhosts.ssh("root@10.250.0.12", "hostname")
    assert (p.returncode, p.stdout.strip()) == (0, "sbxh2"), p.stderr
    # the restarted sshd is in the same host: the same private dirs
    assert testhosts.exec(2, "hostname").stdout.strip() == "sbxh2"
