"""render_domain_xml: the libvirt domain of one instance (pure), against a fixture file."""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from sandbox.backends.libvirtxml import METADATA_NS, DomainConfig, mac_for, render_domain_xml
from sandbox.imageformats.vmdisk import kernel_cmdline

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "libvirt"
D = "/ws/.sandbox/libvirt"

BASIC = DomainConfig(
    name="sbx-1a2b3c4d-staging-1-0",
    instance="staging-1-0",
    workspace="1a2b3c4d",
    env="staging-1",
    image="sha256:" + "ab" * 32,
    domain_type="qemu",
    memory_mib=512,
    vcpus=1,
    kernel=f"{D}/images/cd/vmlinuz",
    initrd=f"{D}/images/cd/initrd.img",
    cmdline=kernel_cmdline("10.219.0.2", "10.219.0.0/24", "10.219.0.1"),
    disk=f"{D}/instances/staging-1-0/disk.qcow2",
    config_disk=f"{D}/instances/staging-1-0/config.img",
    bridge="sbxvirt0",
    mac=mac_for("sbx-1a2b3c4d-staging-1-0"),
    console_log=f"{D}/instances/staging-1-0/console.log",
    address="10.219.0.2",
)


def test_basic_domain_matches_the_fixture() -> None:
    fixture = FIXTURES / "basic.xml"
    if os.environ.get("SANDBOX_UPDATE_FIXTURES") == "1":
        fixture.write_text(render_domain_xml(BASIC))
    assert render_domain_xml(BASIC) == fixture.read_text()


def test_the_xml_parses_and_carries_what_libvirt_needs() -> None:
    root = ET.fromstring(render_domain_xml(BASIC))
    assert root.get("type") == "qemu"
    assert root.findtext("os/kernel") == BASIC.kernel
    assert "root=/dev/vda" in (root.findtext("os/cmdline") or "")
    assert root.find("cpu/model").text == "qemu64"  # type: ignore[union-attr]
    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]  # type: ignore[union-attr]
    assert disks[1].find("readonly") is not None
    assert root.find("devices/interface/source").get("bridge") == "sbxvirt0"  # type: ignore[union-attr]
    agent = root.find("devices/channel/target")
    assert agent is not None and agent.get("name") == "org.qemu.guest_agent.0"
    meta = root.find(f"metadata/{{{METADATA_NS}}}instance")
    assert meta is not None and meta.get("name") == "staging-1-0" and meta.get("workspace") == "1a2b3c4d"


def test_kvm_and_resources() -> None:
    root = ET.fromstring(
        render_domain_xml(dataclasses.replace(BASIC, domain_type="kvm", memory_mib=2048, vcpus=2))
    )
    assert root.get("type") == "kvm"
    assert root.findtext("memory") == "2048" and root.findtext("vcpu") == "2"


def test_values_are_escaped() -> None:
    odd = dataclasses.replace(BASIC, env='a"b<c>&', console_log="/tmp/x'y&z.log")
    root = ET.fromstring(render_domain_xml(odd))
    assert root.find(f"metadata/{{{METADATA_NS}}}instance").get("env") == 'a"b<c>&'  # type: ignore[union-attr]
    assert root.find("devices/serial/source").get("path") == "/tmp/x'y&z.log"  # type: ignore[union-attr]


def test_kernel_cmdline_sets_the_static_address() -> None:
    line = kernel_cmdline("10.219.0.7", "10.219.0.0/24", "10.219.0.1")
    assert "ip=10.219.0.7::10.219.0.1:255.255.255.0::eth0:off" in line.split()
    assert "net.ifnames=0" in line.split()  # so that the interface is eth0
    assert "ip=" not in kernel_cmdline(None, "10.219.0.0/24", "10.219.0.1")


def test_mac_is_stable_local_and_distinct() -> None:
    a, b = mac_for("sbx-x-a-0"), mac_for("sbx-x-a-1")
    assert a == mac_for("sbx-x-a-0") and a != b
    assert a.startswith("52:54:00:") and len(a.split(":")) == 6
