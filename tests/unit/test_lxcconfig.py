"""render_lxc_config: the container config of one instance (pure), against a fixture file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sandbox.backends.base import MountSpec
from sandbox.backends.lxcconfig import CPU_PERIOD_US, LxcInstanceConfig, render_lxc_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lxc"

BASIC = LxcInstanceConfig(
    name="staging-1-0",
    lower="/ws/.sandbox/rootfs/9c848da8efe1-100000/rootfs",
    upper="/ws/.sandbox/lxc/staging-1-0/delta0",
    uid_start=100000,
    uid_count=65536,
    gid_start=100000,
    gid_count=65536,
    bridge="sandbox0",
    address="10.213.0.2",
    prefix=24,
    gateway="10.213.0.1",
    console_log="/ws/.sandbox/lxc/staging-1-0/console.log",
    cgroup_v2=False,
)


def render(**changes: object) -> list[str]:
    return render_lxc_config(dataclasses.replace(BASIC, **changes)).splitlines()


def limit_lines(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith(("lxc.cgroup.", "lxc.cgroup2."))]


def test_basic_instance_matches_the_fixture() -> None:
    assert render_lxc_config(BASIC) == (FIXTURES / "basic.conf").read_text()


def test_basic_instance_is_unprivileged_on_the_bridge_with_a_static_address() -> None:
    lines = render()
    assert "lxc.idmap = u 0 100000 65536" in lines
    assert "lxc.idmap = g 0 100000 65536" in lines
    assert "lxc.include = /usr/share/lxc/config/userns.conf" in lines
    assert f"lxc.rootfs.path = overlay:{BASIC.lower}:{BASIC.upper}" in lines
    assert "lxc.net.0.type = veth" in lines and "lxc.net.0.link = sandbox0" in lines
    assert "lxc.net.0.ipv4.address = 10.213.0.2/24" in lines
    assert "lxc.net.0.ipv4.gateway = 10.213.0.1" in lines
    assert "lxc.apparmor.profile = unconfined" in lines
    assert "lxc.signal.halt = SIGRTMIN+3" in lines  # systemd halts on this signal
    assert limit_lines(lines) == []  # no limits asked, none written
    assert not [ln for ln in lines if ln.startswith("lxc.mount.entry")]
    assert render_lxc_config(BASIC).endswith("\n")


def test_idmap_follows_the_subordinate_ranges() -> None:
    lines = render(uid_start=200000, uid_count=70000, gid_start=300000, gid_count=65536)
    assert "lxc.idmap = u 0 200000 70000" in lines
    assert "lxc.idmap = g 0 300000 65536" in lines


def test_cgroup_v1_limits() -> None:
    lines = render(cgroup_v2=False, memory=512 << 20, cpus=1.5, pids=200)
    assert limit_lines(lines) == [
        "lxc.cgroup.memory.limit_in_bytes = 536870912",
        f"lxc.cgroup.cpu.cfs_period_us = {CPU_PERIOD_US}",
        "lxc.cgroup.cpu.cfs_quota_us = 150000",
        "lxc.cgroup.pids.max = 200",
    ]


def test_cgroup_v2_limits() -> None:
    lines = render(cgroup_v2=True, memory=256 << 20, cpus=0.5, pids=64)
    assert limit_lines(lines) == [
        "lxc.cgroup2.memory.max = 268435456",
        f"lxc.cgroup2.cpu.max = 50000 {CPU_PERIOD_US}",
        "lxc.cgroup2.pids.max = 64",
    ]


@pytest.mark.parametrize("v2", [False, True])
def test_each_limit_alone(v2: bool) -> None:
    key = "lxc.cgroup2" if v2 else "lxc.cgroup"
    assert [ln.split(" = ")[0] for ln in limit_lines(render(cgroup_v2=v2, memory=64 << 20))] == [
        f"{key}.memory.max" if v2 else f"{key}.memory.limit_in_bytes"
    ]
    assert limit_lines(render(cgroup_v2=v2, pids=10)) == [f"{key}.pids.max = 10"]


def test_tiny_cpu_quota_is_clamped_to_the_kernel_minimum() -> None:
    assert limit_lines(render(cgroup_v2=True, cpus=0.001)) == ["lxc.cgroup2.cpu.max = 1000 100000"]
    assert "lxc.cgroup.cpu.cfs_quota_us = 1000" in render(cgroup_v2=False, cpus=0.001)


def test_mounts_become_bind_mount_entries_relative_to_the_rootfs() -> None:
    mounts = (
        MountSpec(src="/srv/shared/config", dest="/etc/app", readonly=True),
        MountSpec(src="/var/cache/app", dest="/var/cache/app"),
    )
    entries = [ln for ln in render(mounts=mounts) if ln.startswith("lxc.mount.entry")]
    assert entries == [
        "lxc.mount.entry = /srv/shared/config etc/app none bind,create=dir,ro 0 0",
        "lxc.mount.entry = /var/cache/app var/cache/app none bind,create=dir 0 0",
    ]


def test_mounts_come_after_the_limits() -> None:
    lines = render(cgroup_v2=True, memory=64 << 20, mounts=(MountSpec("/a", "/b"),))
    assert lines[-1].startswith("lxc.mount.entry") and lines[-2].startswith("lxc.cgroup2.memory")


def test_a_file_mount_gets_a_file_mount_point() -> None:
    m = MountSpec("/srv/conf/app.ini", "/etc/app.ini", readonly=True, is_file=True)
    entries = [ln for ln in render(mounts=(m,)) if "mount.entry" in ln]
    assert entries == ["lxc.mount.entry = /srv/conf/app.ini etc/app.ini none bind,create=file,ro 0 0"]


def test_mount_paths_are_escaped_for_the_fstab_format() -> None:
    mounts = (MountSpec("/srv/my data", "/srv/my data"), MountSpec("/a\tb\\c", "/x"))
    entries = [ln for ln in render(mounts=mounts) if "mount.entry" in ln]
    assert entries == [
        "lxc.mount.entry = /srv/my\\040data srv/my\\040data none bind,create=dir 0 0",
        "lxc.mount.entry = /a\\011b\\134c x none bind,create=dir 0 0",
    ]
