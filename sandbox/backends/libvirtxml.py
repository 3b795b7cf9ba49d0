"""The libvirt domain XML of one instance (pure: fixture-tested in tests/unit/test_libvirtxml.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

#: the namespace of sandbox's <metadata> element in a domain
METADATA_NS = "https://sandbox.invalid/libvirt/1"
METADATA_KEY = "sbx"


@dataclass(frozen=True)
class DomainConfig:
    name: str  # the libvirt domain name (unique on the host)
    instance: str  # sandbox's instance name
    workspace: str  # workspace id, for listing a workspace's domains
    env: str
    image: str
    domain_type: str  # "kvm" or "qemu" (TCG)
    memory_mib: int
    vcpus: int
    kernel: str
    initrd: str
    cmdline: str
    disk: str  # qcow2 overlay
    config_disk: str  # raw, read-only
    bridge: str
    mac: str
    console_log: str
    address: str


def mac_for(name: str) -> str:
    """A stable, locally administered MAC (QEMU's 52:54:00 prefix) for a domain name."""
    h = hashlib.sha256(name.encode()).digest()
    return "52:54:00:{:02x}:{:02x}:{:02x}".format(*h[:3])


def _a(value: object) -> str:
    return quoteattr(str(value))


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_domain_xml(c: DomainConfig) -> str:
    # TCG emulates a generic x86-64 CPU; with KVM the same model keeps guests portable
    cpu = "<cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model></cpu>"
    return f"""<domain type={_a(c.domain_type)}>
  <name>{_text(c.name)}</name>
  <metadata>
    <{METADATA_KEY}:instance xmlns:{METADATA_KEY}={_a(METADATA_NS)} workspace={_a(c.workspace)} \
name={_a(c.instance)} env={_a(c.env)} image={_a(c.image)} address={_a(c.address)}/>
  </metadata>
  <memory unit='MiB'>{int(c.memory_mib)}</memory>
  <vcpu>{int(c.vcpus)}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{_text(c.kernel)}</kernel>
    <initrd>{_text(c.initrd)}</initrd>
    <cmdline>{_text(c.cmdline)}</cmdline>
  </os>
  {cpu}
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file={_a(c.disk)}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file={_a(c.config_disk)}/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='bridge'>
      <source bridge={_a(c.bridge)}/>
      <mac address={_a(c.mac)}/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path={_a(c.console_log)} append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path={_a(c.console_log)} append='on'/>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""
