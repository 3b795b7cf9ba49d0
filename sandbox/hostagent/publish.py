"""Publishing an instance's app on its host's address: one DNAT rule per instance.

Why DNAT and not routes: the router (on the control machine or its own host) then needs nothing but
the host's address and a port; no route to each host's container subnet is added on any machine, and
every host may use the same subnet. The rules live in sandbox's own chains (SANDBOX-PUB in nat
PREROUTING, for local destination addresses only, and SANDBOX-FWD in filter FORWARD, which lets
exactly the published app port through even where the FORWARD policy is DROP). SANDBOX-PUB is also
jumped to from nat OUTPUT, for connections the host makes itself to one of its own addresses but
loopback (a router on a host that runs instances too; a control machine that is its own host): a
connection from 127.0.0.1 cannot be sent to the bridge, so 127.0.0.0/8 keeps its own meaning. Each
rule carries the instance's name as its comment, and is added idempotently (`-C` before `-A`).
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path

from sandbox.errors import SandboxError

NAT_CHAIN = "SANDBOX-PUB"
FWD_CHAIN = "SANDBOX-FWD"
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class PublishError(SandboxError):
    """iptables refused a rule."""


def _ipt(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        p = subprocess.run(["iptables", "-w", "10", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise PublishError(
            "iptables is missing on this host",
            hint="`sandbox host prepare PROFILE` (apt-get install iptables)",
        ) from e
    if check and p.returncode != 0:
        raise PublishError(f"iptables {' '.join(args)}: {p.stderr.strip()}")
    return p


def _ensure_rule(table: str, chain: str, rule: list[str], insert: bool = False) -> None:
    if _ipt("-t", table, "-C", chain, *rule, check=False).returncode != 0:
        _ipt("-t", table, "-I" if insert else "-A", chain, *rule)


def _ensure_chains() -> None:
    local = ["-m", "addrtype", "--dst-type", "LOCAL"]
    for table, chain, parent, jump in (
        ("nat", NAT_CHAIN, "PREROUTING", [*local, "-j", NAT_CHAIN]),
        ("nat", NAT_CHAIN, "OUTPUT", ["!", "-d", "127.0.0.0/8", *local, "-j", NAT_CHAIN]),
        ("filter", FWD_CHAIN, "FORWARD", ["-j", FWD_CHAIN]),
    ):
        if _ipt("-t", table, "-n", "-L", chain, check=False).returncode != 0:
            _ipt("-t", table, "-N", chain, check=False)
        _ensure_rule(table, parent, jump, insert=True)
    _ensure_rule("filter", FWD_CHAIN, ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"])
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    if forward.read_text().strip() != "1":
        forward.write_text("1\n")


def _rules(name: str, port: int, address: str, app_port: int) -> list[tuple[str, str, list[str]]]:
    tag = ["-m", "comment", "--comment", f"sandbox:{name}"]
    return [
        (
            "nat",
            NAT_CHAIN,
            [
                "-p",
                "tcp",
                "--dport",
                str(port),
                *tag,
                "-j",
                "DNAT",
                "--to-destination",
                f"{address}:{app_port}",
            ],
        ),
        ("filter", FWD_CHAIN, ["-p", "tcp", "-d", address, "--dport", str(app_port), *tag, "-j", "ACCEPT"]),
    ]


def publish(name: str, port: int, address: str, app_port: int) -> None:
    """Make ADDRESS:APP_PORT of instance `name` reachable at this host's addresses, port `port`."""
    _check(name, port, address, app_port)
    _ensure_chains()
    for table, chain, rule in _rules(name, port, address, app_port):
        _ensure_rule(table, chain, rule)


def unpublish(name: str, port: int, address: str, app_port: int) -> None:
    """Remove what `publish` added (no error when it is gone)."""
    _check(name, port, address, app_port)
    for table, chain, rule in _rules(name, port, address, app_port):
        while _ipt("-t", table, "-D", chain, *rule, check=False).returncode == 0:
            pass


def _check(name: str, port: int, address: str, app_port: int) -> None:
    try:
        ok = str(ipaddress.IPv4Address(address)) == address
    except ValueError:
        ok = False
    if not (ok and NAME.fullmatch(name) and 1 <= port <= 65535 and 1 <= app_port <= 65535):
        raise PublishError(f"refusing to publish {name!r} port {port} → {address!r}:{app_port}")
