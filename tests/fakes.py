"""Fakes for driving the env service and the promotion without root or daemons (tests only).

`FakeBackend` keeps its instances in a JSON file under the runtime dir, so a forked child that
"crashes" (os._exit) halfway through an operation leaves exactly what a real backend would, and
the parent sees it. `FakeRouter` appends every config it is given to a JSON-lines file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from sandbox.backends.base import Backend, BackendContext, BackendError, ExecResult, InstanceSpec
from sandbox.backends.remote import OnHost
from sandbox.fsutil import atomic_write, file_lock
from sandbox.hosts.publishing import published_port
from sandbox.hosts.transport import HostUnreachable, LocalTransport
from sandbox.routing import RouterConfig, RouterDriver, RouterKind

CRASH_EXIT = 70


class FakeBackend(Backend):
    name = "fake"
    capabilities = frozenset({"snapshot", "clone", "static-address", "logs"})

    #: images whose instances fail their health command
    unhealthy: ClassVar[set[str]] = set()
    #: (operation, n): the n-th call (0-based) of that operation in this process ends it at once
    crash_at: ClassVar[tuple[str, int] | None] = None
    #: (operation, instance-name substring): that call raises BackendError
    fail_at: ClassVar[tuple[str, str] | None] = None
    #: every operation this process made, in order ("create staging-1-0", ...)
    ops: ClassVar[list[str]] = []

    def __init__(self, ctx: BackendContext, remote: str | None = None) -> None:
        super().__init__(ctx, remote)
        self.dir = ctx.runtime / "fake"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = self.dir / "instances.json"

    # -- bookkeeping ------------------------------------------------------------------------
    def _op(self, op: str, name: str) -> None:
        count = sum(1 for o in FakeBackend.ops if o.split(" ")[0] == op)
        FakeBackend.ops.append(f"{op} {name}")
        if FakeBackend.crash_at == (op, count):
            os._exit(CRASH_EXIT)
        if (
            FakeBackend.fail_at is not None
            and FakeBackend.fail_at[0] == op
            and FakeBackend.fail_at[1] in name
        ):
            raise BackendError(f"fake {op} of {name} failed", hint="a test asked for it")

    @contextlib.contextmanager
    def _data(self) -> Iterator[dict[str, Any]]:
        with file_lock(self.dir / "lock"):
            data: dict[str, Any] = json.loads(self.db.read_text()) if self.db.exists() else {}
            yield data
            atomic_write(self.db, json.dumps(data, sort_keys=True).encode())

    def held(self) -> dict[str, Any]:
        return json.loads(self.db.read_text()) if self.db.exists() else {}

    # -- the contract -----------------------------------------------------------------------
    def check(self) -> None:
        pass

    def prepare_image(self, digest: str) -> None:
        self._op("prepare", digest[7:19])

    def create(self, spec: InstanceSpec) -> None:
        self._op("create", spec.name)
        with self._data() as d:
            d[spec.name] = {"image": spec.image, "state": "stopped", "address": spec.address, "files": {}}

    def clone(self, src: str, spec: InstanceSpec) -> None:
        self._op("clone", spec.name)
        with self._data() as d:
            if src not in d:
                raise BackendError(f"no instance {src}")
            d[spec.name] = {**d[src], "state": "stopped", "address": spec.address}

    def start(self, name: str) -> None:
        self._op("start", name)
        with self._data() as d:
            d[name]["state"] = "running"

    def stop(self, name: str, timeout: float = 10.0) -> None:
        self._op("stop", name)
        with self._data() as d:
            if name in d:
                d[name]["state"] = "stopped"

    def destroy(self, name: str) -> None:
        self._op("destroy", name)
        with self._data() as d:
            d.pop(name, None)

    def state(self, name: str) -> str:
        inst = self.held().get(name)
        return "missing" if inst is None else str(inst["state"])

    def address(self, name: str) -> str:
        return str(self.held()[name]["address"])

    def exec(
        self,
        name: str,
        argv: list[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        interactive: bool = False,
        timeout: float | None = None,
    ) -> ExecResult:
        self._op("exec", name)
        inst = self.held().get(name)
        if inst is None or inst["state"] != "running":
            return ExecResult(1, "", f"{name} is not running")
        if inst["image"] in FakeBackend.unhealthy:
            return ExecResult(1, "", "unhealthy")
        return ExecResult(0, " ".join(argv), "")

    def put_file(self, name: str, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        self._op("put", name)
        with self._data() as d:
            d[name]["files"][path] = data.decode()

    def snapshot(self, name: str, snap: str) -> dict[str, str]:
        self._op("snapshot", name)
        with self._data() as d:
            d[name].setdefault("snapshots", {})[snap] = dict(d[name]["files"])
        return {}

    def restore(self, name: str, snap: str) -> None:
        self._op("restore", name)
        with self._data() as d:
            d[name]["files"] = dict(d[name]["snapshots"][snap])

    def delete_snapshot(self, name: str, snap: str) -> None:
        with self._data() as d:
            d.get(name, {}).get("snapshots", {}).pop(snap, None)

    def instances(self) -> list[str]:
        return sorted(self.held())


class FakeRouter:
    """A RouterDriver that records what it is asked to serve (JSON lines, shared across processes)."""

    def __init__(self, log: Path, env: str, kind: RouterKind) -> None:
        self.log = log
        self.env = env
        self.kind = kind

    def _record(self, **entry: Any) -> None:
        with self.log.open("a") as f:
            f.write(json.dumps({"env": self.env, **entry}) + "\n")

    def apply(self, cfg: RouterConfig, user: str = "nobody") -> None:
        self._record(
            op="apply",
            backends=sorted(cfg.backends),
            maintenance=None if cfg.maintenance is None else list(cfg.maintenance),
            readonly=cfg.readonly,
            port=cfg.port,
        )

    def stop(self, timeout: float = 10.0) -> None:
        self._record(op="stop")

    def remove(self) -> None:
        self._record(op="remove")

    def drain(self, timeout: float, backend: str | None = None) -> bool:
        self._record(op="drain", backend=backend)
        return True

    def abort(self, backends: Sequence[str]) -> None:
        self._record(op="abort", backends=list(backends))


def router_factory(log: Path) -> Callable[[str, RouterKind], RouterDriver]:
    return lambda env, kind: FakeRouter(log, env, kind)


def router_log(log: Path, env: str | None = None) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    return [e for e in entries if env is None or e["env"] == env]


class FakeHostBackend(OnHost, FakeBackend):
    """A FakeBackend standing for the lxc backend on one production host (sandbox/backends/remote.py):
    its own instance file per host, instances published at HOST_ADDRESS:PORT, and a host that can
    "die" (every call raises HostUnreachable naming it, as the SSH transport does)."""

    #: hosts that do not answer (every call raises HostUnreachable)
    down: ClassVar[set[str]] = set()
    #: (operation, host): that call on that host makes the host die (it joins `down`)
    die_at: ClassVar[tuple[str, str] | None] = None

    def __init__(self, ctx: BackendContext, host: str, host_address: str) -> None:
        super().__init__(ctx)
        self.host = host
        self.host_address = host_address
        # what EnvHosts.ready reads of a RemoteLxc (the transport only names the host)
        self.agent = _FakeAgent(LocalTransport(host))

    def _unreachable(self) -> None:
        if self.host in FakeHostBackend.down:
            raise HostUnreachable(f"host {self.host} (fake) is unreachable", hint="a test", host=self.host)

    def _op(self, op: str, name: str) -> None:
        if FakeHostBackend.die_at == (op, self.host):
            FakeHostBackend.down.add(self.host)
        self._unreachable()
        super()._op(op, f"{name}@{self.host}")

    def check(self) -> None:
        self._unreachable()

    def state(self, name: str) -> str:
        self._unreachable()
        return super().state(name)

    # -- what gc reads and removes on a host (its unpacked images: a file beside its instances)
    def _images(self) -> list[str]:
        f = self.dir / "images.json"
        return list(json.loads(f.read_text())) if f.exists() else []

    def prepare_image(self, digest: str) -> None:
        super().prepare_image(digest)
        atomic_write(self.dir / "images.json", json.dumps(sorted({*self._images(), digest})).encode())

    def instances(self) -> list[str]:
        self._unreachable()
        return super().instances()

    def images(self) -> list[str]:
        self._unreachable()
        return self._images()

    def forget_image(self, digest: str) -> None:
        self._op("forget", digest[7:19])
        atomic_write(
            self.dir / "images.json", json.dumps([d for d in self._images() if d != digest]).encode()
        )

    def clean_stale(self) -> list[str]:
        self._unreachable()
        return []

    def published(self, spec: InstanceSpec) -> str | None:
        if spec.app_port is None or spec.address is None:
            return None
        return f"{self.host_address}:{published_port(spec.address, self.ctx.network.subnet)}"


class _FakeAgent:
    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.name = transport.name

    def prefix(self) -> list[str]:
        return ["false"]
