"""Which production host runs which instance: a pure function of the hosts and the count.

Promotion replaces instances one at a time in index order, so consecutive indexes sit on
different hosts: while one instance is swapped, its neighbours keep the other hosts serving.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sandbox.config.resolved import HostSpec


def place(hosts: Sequence[HostSpec], instances: int) -> list[str]:
    """The host name of each instance index 0..instances-1.

    Without per-host counts, index i goes to hosts[i % len(hosts)] (6 over 3 hosts: 2 each).
    With them (on every host, as the profile schema demands), hosts take turns in their order,
    each until its count is used up; `instances` must then be their sum.
    """
    if instances < 0:
        raise ValueError(f"instances must be 0 or more, not {instances}")
    if not hosts:
        raise ValueError("no hosts to place instances on")
    counts = [h.instances for h in hosts]
    if all(c is None for c in counts):
        return [hosts[i % len(hosts)].name for i in range(instances)]
    if any(c is None for c in counts):
        raise ValueError("per-host instance counts must be given on every host or none")
    left = [c or 0 for c in counts]
    if sum(left) != instances:
        raise ValueError(f"the per-host counts add up to {sum(left)}, not {instances}")
    out: list[str] = []
    while len(out) < instances:
        for i, host in enumerate(hosts):
            if left[i]:
                out.append(host.name)
                left[i] -= 1
    return out


def counts(placement: Sequence[str]) -> dict[str, int]:
    """Instances per host name, in order of first appearance."""
    return dict(Counter(placement))
