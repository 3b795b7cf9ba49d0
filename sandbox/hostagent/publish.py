"""Publishing an instance's app on its host's address: one DNAT rule per instance.

Why DNAT and not routes: the router (on the control machine or its own host) then needs nothing but
the host's address and a port; no route to each host's container subnet is added on any machine, and
every host may use the same subnet. The rules live in sandbox's own chains (SANDBOX-PUB in nat
PREROUTING, for local destination addresses only, and SANDBOX-FWD in filter FORWARD, which lets
exactly the published app port through even where the FORWARD policy is DROP). SANDBOX-PUB is also
jumped to from nat OUTPUT, for connections the host makes itself to one of its own addresses but
loopback (a router on a host that runs instances too; a control machine that is its own host): a
connection from 127.0.0.1 cannot be sent to the bridge, so 127.0.0.0/8 keeps its own meaning. Each
rule carries the instance's name as its comment. A publish or unpublish is one `iptables-save` and at
most one `iptables-restore --noflush` batch (atomic per table), not a command per rule and check:
an instance's rules are replaced by number, a chain or jump added only where the save lacks it.
"""

from __future__ import annotations

import fcntl
import ipaddress
import re
import shlex
import subprocess
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.hostagent.main import host_root

NAT_CHAIN = "SANDBOX-PUB"
FWD_CHAIN = "SANDBOX-FWD"
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class PublishError(SandboxError):
    """iptables refused a rule."""


def _run(argv: list[str], data: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=data, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError as e:
        raise PublishError(
            "iptables is missing on this host",
            hint="`sandbox host prepare PROFILE` (apt-get install iptables)",
        ) from e


#: sandbox's jumps into its chains: (table, parent chain, the rule, in iptables-save's own words)
JUMPS = (
    ("nat", "PREROUTING", f"-m addrtype --dst-type LOCAL -j {NAT_CHAIN}"),
    ("nat", "OUTPUT", f"! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j {NAT_CHAIN}"),
    ("filter", "FORWARD", f"-j {FWD_CHAIN}"),
)
ESTABLISHED = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"


class Tables:
    """The nat and filter tables as `iptables-save` shows them: chains, and each chain's rules."""

    def __init__(self, text: str) -> None:
        self.chains: dict[str, dict[str, list[list[str]]]] = {"nat": {}, "filter": {}}
        table: dict[str, list[list[str]]] | None = None
        for line in text.splitlines():
            if line.startswith("*"):
                table = self.chains.setdefault(line[1:].strip(), {})
            elif table is not None and line.startswith(":"):
                table.setdefault(line[1:].split(" ", 1)[0], [])
            elif table is not None and line.startswith("-A "):
                words = shlex.split(line)
                table.setdefault(words[1], []).append(words[2:])

    def jumps_to(self, table: str, chain: str, target: str) -> bool:
        rules = self.chains.get(table, {}).get(chain, [])
        return any(r[-2:] == ["-j", target] and "--dport" not in r for r in rules)

    def numbers(self, table: str, chain: str, name: str) -> list[int]:
        """The numbers of the rules of instance `name` in `chain` (1-based), highest first."""
        rules = self.chains.get(table, {}).get(chain, [])
        tag = f"sandbox:{name}"
        return [i + 1 for i, r in enumerate(rules) if tag in r][::-1]


def batch(now: Tables, name: str, rules: list[tuple[str, str, list[str]]]) -> str:
    """The `iptables-restore --noflush` input that makes instance `name`'s rules exactly `rules`
    (none: unpublish) with sandbox's chains and jumps in place; "" when there is nothing to change.
    A chain that exists is never declared again (that would flush it)."""
    out: list[str] = []
    for table in ("nat", "filter"):
        lines: list[str] = []
        have = now.chains.get(table, {})
        if rules:
            for t, parent, jump in JUMPS:
                target = jump.rsplit(" ", 1)[1]
                if t != table:
                    continue
                if target not in have:
                    lines.insert(0, f":{target} - [0:0]")
                if not now.jumps_to(table, parent, target):
                    lines.append(f"-I {parent} 1 {jump}")
            if table == "filter" and not any(
                r[-2:] == ["-j", "ACCEPT"] and "--ctstate" in r for r in have.get(FWD_CHAIN, [])
            ):
                lines.append(f"-I {FWD_CHAIN} 1 {ESTABLISHED}")
        for chain in (NAT_CHAIN,) if table == "nat" else (FWD_CHAIN,):
            stale = now.numbers(table, chain, name)
            wanted = [shlex.join(r) for t, c, r in rules if t == table and c == chain]
            current = [shlex.join(have[chain][n - 1]) for n in sorted(stale)]
            if current == wanted:
                continue  # already exactly so (publish is idempotent)
            lines += [f"-D {chain} {n}" for n in stale]
            lines += [f"-A {chain} {w}" for w in wanted]
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(out) + "\n" if out else ""


def _apply(name: str, rules: list[tuple[str, str, list[str]]]) -> None:
    """Instance `name`'s rules made `rules`: one iptables-save and at most one iptables-restore, under
    a lock (another workspace's agent on this host changes the same chains)."""
    lock = host_root() / "publish.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        saved = _run(["iptables-save"])
        if saved.returncode != 0:
            raise PublishError(f"iptables-save: {saved.stderr.strip()}")
        text = batch(Tables(saved.stdout), name, rules)
        if text:
            p = _run(["iptables-restore", "-w", "10", "--noflush"], text)
            if p.returncode != 0:
                raise PublishError(f"iptables-restore: {p.stderr.strip()}\n{text}")


def _enable_forwarding() -> None:
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    if forward.read_text().strip() != "1":
        forward.write_text("1\n")


def _rules(name: str, port: int, address: str, app_port: int) -> list[tuple[str, str, list[str]]]:
    """The instance's rules in iptables-save's own words (so an unchanged one is seen as such)."""
    tag = ["-m", "comment", "--comment", f"sandbox:{name}"]
    tcp = ["-p", "tcp", "-m", "tcp"]
    return [
        (
            "nat",
            NAT_CHAIN,
            [*tcp, "--dport", str(port), *tag, "-j", "DNAT", "--to-destination", f"{address}:{app_port}"],
        ),
        ("filter", FWD_CHAIN, ["-d", f"{address}/32", *tcp, "--dport", str(app_port), *tag, "-j", "ACCEPT"]),
    ]


def publish(name: str, port: int, address: str, app_port: int) -> None:
    """Make ADDRESS:APP_PORT of instance `name` reachable at this host's addresses, port `port`."""
    _check(name, port, address, app_port)
    _enable_forwarding()
    _apply(name, _rules(name, port, address, app_port))


def unpublish(name: str, port: int, address: str, app_port: int) -> None:
    """Remove what `publish` added (no error when it is gone)."""
    _check(name, port, address, app_port)
    _apply(name, [])


def remove(name: str) -> None:
    """Remove every rule of instance `name` (no error when there is none)."""
    if not NAME.fullmatch(name):
        raise PublishError(f"refusing to unpublish {name!r}")
    _apply(name, [])


def _check(name: str, port: int, address: str, app_port: int) -> None:
    try:
        ok = str(ipaddress.IPv4Address(address)) == address
    except ValueError:
        ok = False
    if not (ok and NAME.fullmatch(name) and 1 <= port <= 65535 and 1 <= app_port <= 65535):
        raise PublishError(f"refusing to publish {name!r} port {port} → {address!r}:{app_port}")
