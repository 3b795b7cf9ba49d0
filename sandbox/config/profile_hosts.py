"""Production hosts in a profile: the `hosts:` entries and the rules tying them to the other keys.

A profile with `hosts:` places its instances on those machines over SSH (issue 11). The field
checks wrap `hostvalues` (pure, shared with the transport) so a bad value is reported at load with
file:line; `check_profile` holds the cross-key rules, run by `Profile`'s model validator. Each rule
fails with `at=` naming the key it is about, since a model validator's error has no location.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict

from sandbox.config import hostvalues, netvalues
from sandbox.config.fields import fail

if TYPE_CHECKING:
    from sandbox.config.profile import Profile

MAX_HOSTS = 32
MAX_LABELS = 32
MAX_INSTANCES = 64  # Profile.instances' bound
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[A-Za-z0-9_.-]{1,63}")
LABEL_HINT = "keys: lower-case letters, digits, '_', '.', '-'; values: letters, digits, '_', '.', '-'"
PER_HOST_HINT = "give every host an `instances:` count, or none (then instances are spread evenly)"


def _host_name(value: str) -> str:
    try:
        return hostvalues.host_name(value)
    except ValueError:
        fail(f"{value!r} is not a host name", hostvalues.HOST_NAME_HINT)


def _ssh_target(value: str) -> str:
    """Checked, and kept as written: the transport parses it again right before use."""
    try:
        hostvalues.ssh_target(value)
    except ValueError as e:
        fail(str(e).removesuffix(f" ({hostvalues.TARGET_HINT})"), hostvalues.TARGET_HINT)
    return value


def _address(value: str) -> str:
    try:
        netvalues.ipv4(value)
    except ValueError as e:
        fail(str(e), "the IPv4 address the router reaches the host at, e.g. 10.0.0.11")
    addr = ipaddress.IPv4Address(value)
    if addr.is_unspecified or addr.is_multicast or addr == ipaddress.IPv4Address("255.255.255.255"):
        fail(f"{value!r} is not an address the router can reach a host at", "e.g. 10.0.0.11")
    return value


def _label_text(regex: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not regex.fullmatch(value):
            fail(f"{value!r} is not a valid label {what}", LABEL_HINT)
        return value

    return AfterValidator(check)


def _scalar_text(value: Any) -> Any:
    """`zone: 1` or `ssd: true` in YAML: taken as their text, as env values are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


HostName = Annotated[str, AfterValidator(_host_name)]
SshTarget = Annotated[str, AfterValidator(_ssh_target)]
LabelKey = Annotated[str, _label_text(LABEL_KEY_RE, "key")]
LabelValue = Annotated[str, BeforeValidator(_scalar_text), _label_text(LABEL_VALUE_RE, "value")]


class Host(BaseModel):
    """A production host: a machine reached over SSH that runs some of the env's instances."""

    model_config = ConfigDict(extra="forbid")
    name: HostName = Field(description="Host name used in listings and placement, e.g. web1 (unique).")
    ssh: SshTarget = Field(
        description="SSH target: USER@HOST, USER@HOST:PORT or an alias of ~/.ssh/config (unique)."
    )
    address: Annotated[str, AfterValidator(_address)] | None = Field(
        None,
        description="IPv4 address the router reaches the host at; resolved from the SSH target when omitted.",
    )
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=MAX_LABELS, description="Free labels, e.g. {zone: a} (at most 32)."
    )
    instances: Annotated[int, Strict(), Field(ge=0, le=MAX_INSTANCES)] | None = Field(
        None,
        description="Instances on this host; give it on every host or none (then spread evenly).",
    )


def machine(target: str) -> tuple[str, str | None, int | None]:
    """An SSH target as a comparable key: `Deploy@Web1` and `deploy@web1` differ only in the host's case."""
    t = hostvalues.ssh_target(target)
    return t.host.lower(), t.user, t.port


def _listing(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def check_hosts(hosts: Sequence[Host]) -> None:
    """Rules about the `hosts` list alone (it is replaced, never merged, along an extends chain)."""
    if len(hosts) > MAX_HOSTS:
        fail(f"{len(hosts)} hosts, at most {MAX_HOSTS}", "split the env into several profiles", at=("hosts",))
    names: dict[str, int] = {}
    targets: dict[tuple[str, str | None, int | None], int] = {}
    for i, host in enumerate(hosts):
        if host.name in names:
            fail(
                f"duplicate host name '{host.name}' (also hosts[{names[host.name]}])",
                "name each host once",
                at=("hosts", i, "name"),
            )
        names[host.name] = i
        key = machine(host.ssh)
        if key in targets:
            fail(
                f"duplicate ssh target '{host.ssh}' (also hosts[{targets[key]}])",
                "list each machine once; give it more instances with a per-host `instances:`",
                at=("hosts", i, "ssh"),
            )
        targets[key] = i
    counted = [i for i, h in enumerate(hosts) if h.instances is not None]
    if counted and len(counted) != len(hosts):
        first = next(i for i, h in enumerate(hosts) if h.instances is None)
        fail(
            f"hosts[{first}] ({hosts[first].name}) has no `instances:` but hosts[{counted[0]}] has",
            PER_HOST_HINT,
            at=("hosts", first),
        )


def check_profile(p: Profile) -> None:
    """Rules tying `hosts` and `router.host/ssh` to the other keys (run on the merged profile)."""
    if p.hosts:
        _hosts_fit(p)
        _instances_fit(p)
    _router_host(p)


#: the engines sandbox runs on production hosts
HOST_ENGINES = ("lxc", "docker", "lxd", "libvirt")


def _hosts_fit(p: Profile) -> None:
    if p.remote is not None:
        fail(
            "give either `hosts` or `remote`, not both",
            "production hosts are reached over SSH; `remote:` is one daemon of lxd/docker/libvirt",
            at=("remote",),
        )
    if p.backend not in HOST_ENGINES:
        fail(
            f"hosts run the lxc, docker, lxd or libvirt backend, not {p.backend}",
            "use backend: lxc, docker, lxd or libvirt on hosts",
            at=("backend",) if "backend" in p.model_fields_set else ("hosts",),
        )
    if p.mounts:
        fail(
            "`mounts` cannot be used with `hosts`: a workspace path does not exist on a host",
            "remove mounts; put the files in the image (the recipe's `files:`)",
            at=("mounts",),
        )
    if p.ports:
        fail(
            "`ports` cannot be used with `hosts` yet",
            "forward through the router instead (router.listen/port)",
            at=("ports",),
        )


def _instances_fit(p: Profile) -> None:
    """Per-host counts fix `instances` (their sum); without them, each host needs at least one."""
    counts = [h.instances for h in p.hosts]
    given = "instances" in p.model_fields_set
    if all(c is not None for c in counts):
        total = sum(c for c in counts if c is not None)
        if given and p.instances != total:
            fail(
                f"instances: {p.instances}, but the per-host counts add up to {total}",
                "omit `instances:` (it is then the sum of the per-host counts) or make them add up",
                at=("instances",),
            )
        if not 1 <= total <= MAX_INSTANCES:
            fail(f"the per-host counts add up to {total}, not 1-{MAX_INSTANCES}", at=("hosts",))
        p.instances = total
    elif p.instances < len(p.hosts):
        empty = [h.name for h in p.hosts[p.instances :]]
        fail(
            f"instances: {p.instances} spread over {len(p.hosts)} hosts leaves {_listing(empty)} empty",
            f"raise instances to at least {len(p.hosts)}, or give per-host `instances:` (0 is allowed)",
            at=("instances",) if given else ("hosts",),
        )


def _router_host(p: Profile) -> None:
    """router.host/ssh: both or neither; a host of `hosts` lends its ssh target."""
    r = p.router
    if r is None or (r.host is None and r.ssh is None):
        return
    if r.host is None:
        fail(
            "router.ssh needs router.host (a name for the router's machine)",
            "e.g. host: lb1",
            at=("router", "ssh"),
        )
    if not p.hosts:
        fail(
            "a router on another host needs the instances on `hosts` too",
            "omit router.host/ssh to run nginx on this machine, or add `hosts:`",
            at=("router", "host"),
        )
    by_name = {h.name: h for h in p.hosts}
    host = by_name.get(r.host)
    if host is not None:
        if r.ssh is not None and r.ssh != host.ssh:
            fail(
                f"router.ssh '{r.ssh}' differs from the ssh target '{host.ssh}' of host {host.name}",
                "omit router.ssh: it is taken from hosts[].ssh",
                at=("router", "ssh"),
            )
        r.ssh = host.ssh
        return
    if r.ssh is None:
        fail(
            f"router host '{r.host}' is not one of the hosts ({', '.join(by_name)}), so it needs router.ssh",
            "add router.ssh: USER@HOST, or name one of the hosts",
            at=("router", "host"),
        )
    for i, h in enumerate(p.hosts):
        if machine(r.ssh) == machine(h.ssh):
            fail(
                f"router.ssh '{r.ssh}' is the ssh target of hosts[{i}] ({h.name})",
                f"name that host instead: router.host: {h.name}",
                at=("router", "ssh"),
            )
