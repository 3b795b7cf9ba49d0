"""`sandbox gc` on production hosts: orphan instances and unused unpacked images of this workspace.

The hosts visited are those of the envs in the state DB: each env's hosts (but those drained from
it), and the hosts its profile file still names (where a drain's leftovers are), once per (ssh
target, engine). A draft profile's hosts are never contacted. On each host, as on this machine: list
what exists first, then read the DB (an `up` meanwhile records its instance, and claims its env,
before it makes anything there), and remove only an instance of an env this state knows that no row
names. An instance of an env unknown here is left alone with a warning: the host-side owner is the
workspace id (a hash of the workspace's path), which another control machine with a checkout at the
same path shares. The host's blob store (/var/lib/sandbox-host/store) is shared by the workspaces
using the host: gc never deletes from it. A host that does not answer, or answers nonsense, is
reported and skipped; the others are collected.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sandbox.backends.base import Backend
from sandbox.config.resolved import ResolvedProfile
from sandbox.envs.context import EnvContext
from sandbox.envs.profiles import profile_for
from sandbox.errors import SandboxError
from sandbox.events import Event

#: what a host may answer as an instance name or an image digest (anything else is left alone)
INSTANCE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: hosts visited at once; a host that is gone holds its worker for the ssh connect timeout
WORKERS = 8


@dataclass
class HostGc:
    """What gc removed on one host (names as `HOST:NAME`), and why it stopped there, if it did."""

    host: str
    instances: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    error: str | None = None


def host_targets(ctx: EnvContext) -> list[tuple[ResolvedProfile, str]]:
    """(profile, host name) once per (ssh target, engine): the hosts of the envs in the state (but
    those drained from them), then those their profile files name now (one that does not load is
    skipped with a log event: gc must not fail on a profile being edited)."""
    envs = ctx.state.list_envs()
    found = [(e.spec, set(e.config.get("drained_hosts", []))) for e in envs]
    for e in envs:
        if not (ctx.ws.profiles / f"{e.name}.yaml").is_file():
            continue
        try:
            found.append((profile_for(ctx.ws, e.name).spec, set()))
        except SandboxError as err:
            ctx.emit("log", "gc", f"skipped profile {e.name}.yaml: {err.message}")
    seen: set[tuple[str, str]] = set()
    out = []
    for p, drained in found:
        for h in p.hosts:
            if h.name not in drained and (h.ssh, p.backend) not in seen:
                seen.add((h.ssh, p.backend))
                out.append((p, h.name))
    return out


def collect_hosts(ctx: EnvContext, *, images: bool) -> list[HostGc]:
    """Visit every host of the workspace (in parallel) and remove what no env owns there."""
    targets = host_targets(ctx)
    hosts = ctx.hosts  # made here, not in the workers

    def one(target: tuple[ResolvedProfile, str]) -> HostGc:
        profile, host = target
        r = HostGc(host)
        try:
            _collect(ctx, hosts.backend(profile, host), r, images)
        except SandboxError as e:  # a host that does not answer: the others are still collected
            r.error = e.message if host in e.message else f"host {host}: {e.message}"
        except ImportError as e:  # docker on hosts, and no docker SDK here (`pip install sandbox[docker]`)
            r.error = f"host {host}: {e}"
        except Exception as e:  # a host's malformed answer must not stop the others
            r.error = f"host {host}: unexpected answer ({type(e).__name__}: {str(e)[:200]})"
        if r.error is not None:
            ctx.emit("warning", "gc", f"skipped the rest on host {host}: {r.error}")
        return r

    if not targets:
        return []
    sink, lock = ctx.sink, threading.Lock()

    def locked(e: Event) -> None:  # the CLI's progress display is not thread-safe
        with lock:
            sink(e)

    ctx.sink = locked
    try:
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(targets))) as pool:
            return list(pool.map(one, targets))
    finally:
        ctx.sink = sink


def _valid(
    ctx: EnvContext, host: str, what: str, items: Sequence[object], pattern: re.Pattern[str]
) -> list[str]:
    """The items of a host's answer that are well-formed (the host is not trusted: its answer ends
    up in messages and the report)."""
    ok: list[str] = [x for x in items if isinstance(x, str) and pattern.fullmatch(x)]
    if len(ok) < len(items):
        ctx.emit("warning", "gc", f"host {host}: left alone {len(items) - len(ok)} malformed {what}")
    return ok


def _collect(ctx: EnvContext, backend: Backend, r: HostGc, images: bool) -> None:
    present = _valid(ctx, r.host, "instance names", backend.instances(), INSTANCE)  # first, then the DB
    known = {i.name for i in ctx.state.all_instances()}
    envs = {e.name for e in ctx.state.list_envs()}
    foreign = [i for i in present if i not in known and i.rsplit("-", 1)[0] not in envs]
    if foreign:
        ctx.emit(
            "warning",
            "gc",
            f"host {r.host}: left alone {', '.join(foreign[:5])}"
            + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            + ": instances of envs this workspace's state does not know (another control machine's?)",
        )
    for inst in present:
        if inst not in known and inst not in foreign:
            ctx.emit("progress", "gc", f"removing orphan instance {inst} on host {r.host}")
            backend.destroy(inst)
            r.instances.append(f"{r.host}:{inst}")
    if images:
        kept = _valid(ctx, r.host, "image digests", backend.images(), DIGEST)
        used = {e.image for e in ctx.state.list_envs()}
        used |= {i.image for i in ctx.state.all_instances() if i.image}
        for digest in kept:
            if digest not in used:
                ctx.emit("progress", "gc", f"forgetting image {digest[:19]} on host {r.host}")
                backend.forget_image(digest)
                r.images.append(f"{r.host}:{digest}")
    backend.clean_stale()
