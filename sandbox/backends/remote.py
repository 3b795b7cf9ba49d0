"""The lxc backend on a production host: every method is one call of the host agent over SSH.

The host runs the same LxcBackend as this machine (sandbox/hostagent/lxcops.py); this class only
carries the calls there and back. Each instance's app is published on the host's address (a DNAT
rule per instance, sandbox/hostagent/publish.py), so the router and the health probes reach it at
`endpoint()`, HOST_ADDRESS:PUBLISHED_PORT, with no route to the host's container subnet.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
from collections.abc import Mapping
from typing import Any, ClassVar

from sandbox.backends.base import Backend, BackendContext, ExecResult, InstanceSpec, UnsupportedOperation
from sandbox.events import Event, EventSink
from sandbox.hosts.agent import HostAgent
from sandbox.hosts.agentcall import AgentError
from sandbox.hosts.publishing import published_port


class OnHost:
    """What every backend on a production host has (RemoteLxc, RemoteDocker, RemoteLibvirt): the
    host's agent and the calls of its engine's op, its name in the profile, the address this machine
    reaches it at, each instance's app published there at a port that follows from the instance's
    address (sandbox/hosts/publishing.py), and a socket of the host forwarded by its ssh connection."""

    agent: HostAgent
    host: str
    host_address: str
    ctx: BackendContext
    sink: EventSink
    #: the host agent's op that carries this engine's methods (sandbox/hostagent/: "lxc", "libvirt")
    agent_op: ClassVar[str] = ""

    def _on_host(self, agent: HostAgent, host_address: str) -> None:
        self.agent = agent
        self.host = agent.name
        self.host_address = host_address
        self._prepared: set[str] = set()  # images made ready on the host during this command
        net = self.ctx.network
        self._host_ctx = {
            "ws": self.ctx.workspace_id,
            "network": {"bridge": net.bridge, "subnet": net.subnet},
        }

    def _call(self, method: str, timeout: float | None = 300, **args: Any) -> Any:
        """One method of this engine's agent op on the host; its events are shown with the host's name."""
        answer = self.agent.call(
            self.agent_op, request={"ctx": self._host_ctx, "method": method, "args": args}, timeout=timeout
        )
        if not isinstance(answer, dict):
            raise AgentError(f"host {self.host}: malformed answer to {method}", host=self.host)
        for e in answer.get("events") or []:
            if isinstance(e, dict) and e.get("message"):
                self.sink(Event("log", phase=str(e.get("phase", "")), message=f"{self.host}: {e['message']}"))
        return answer.get("result")

    def _host_argv(self, op: str, *, tty: bool = False, **args: Any) -> list[str]:
        """The local command line that runs agent op `op` on the host attached to this terminal
        (`lxc-tty`, `lxc-logs`, `libvirt-logs`): its one argument is `args` with the context."""
        self.agent.ensure()
        arg = base64.urlsafe_b64encode(json.dumps({"ctx": self._host_ctx, "args": args}).encode()).decode()
        return self.agent.transport.argv(self.agent.argv(op, arg), tty=tty)

    def _forwarded(self, remote_socket: str) -> str:
        """A local unix socket that reaches `remote_socket` on the host, forwarded by its strict ssh
        connection (sandbox/hosts/ssh.py); with a transport without ssh (unit tests) the socket itself."""
        forward = getattr(self.agent.transport, "forward_unix", None)
        return remote_socket if forward is None else str(forward(remote_socket))

    def _spec(self, spec: InstanceSpec) -> dict[str, Any]:
        if spec.mounts:
            raise UnsupportedOperation(
                f"instance {spec.name}: host paths cannot be mounted on host {self.host}",
                hint="remove mounts: from the profile (a workspace path does not exist on a host)",
            )
        d = dataclasses.asdict(spec)
        d["env_vars"] = dict(spec.env_vars)
        return d

    def _publish(self, spec: InstanceSpec) -> dict[str, int] | None:
        if spec.app_port is None or spec.address is None:
            return None
        return {"port": published_port(spec.address, self.ctx.network.subnet), "app_port": spec.app_port}

    def ships(self, digest: str) -> str:
        """The image that goes to the host for image `digest` (the VM flavour, for libvirt)."""
        return digest

    def published(self, spec: InstanceSpec) -> str | None:
        if spec.app_port is None or spec.address is None:
            return None
        return f"{self.host_address}:{published_port(spec.address, self.ctx.network.subnet)}"

    def address(self, name: str) -> str:
        return self.host_address


class RemoteLxc(OnHost, Backend):
    """Instances of one workspace on one host (name: the host's name in the profile)."""

    name = "lxc"
    capabilities = frozenset({"snapshot", "clone", "init", "logs", "static-address"})
    agent_op = "lxc"

    def __init__(self, ctx: BackendContext, agent: HostAgent, host_address: str) -> None:
        super().__init__(ctx)
        self._on_host(agent, host_address)

    def check(self) -> None:
        self._call("check")

    def prepare_image(self, digest: str) -> None:
        # once per command: a promotion asks again for every instance it starts (each ask is an ssh
        # round trip and a Python start on the host, ~0.25 s)
        if digest not in self._prepared:
            self._call("prepare_image", digest=digest, timeout=None)
            self._prepared.add(digest)

    def create(self, spec: InstanceSpec) -> None:
        self._call("create", spec=self._spec(spec), publish=self._publish(spec), timeout=None)

    def clone(self, src: str, spec: InstanceSpec) -> None:
        self._call("clone", src=src, spec=self._spec(spec), publish=self._publish(spec), timeout=None)

    def start(self, name: str) -> None:
        self._call("start", name=name)

    def stop(self, name: str, timeout: float = 10.0) -> None:
        self._call("stop", name=name, timeout=timeout + 30)

    def destroy(self, name: str) -> None:
        self._call("destroy", name=name)

    def state(self, name: str) -> str:
        return str(self._call("state", name=name, timeout=30))

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
        if interactive:
            cmd = self._host_argv("lxc-tty", tty=True, name=name, argv=argv, user=user)
            return ExecResult(subprocess.call(cmd), "", "")
        r = self._call(
            "exec",
            name=name,
            argv=argv,
            user=user,
            env=dict(env or {}),
            timeout=timeout,
        )
        return ExecResult(int(r["code"]), str(r["stdout"]), str(r["stderr"]))

    def put_file(self, name: str, path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
        self._call(
            "put_file",
            name=name,
            path=path,
            data=base64.b64encode(data).decode(),
            mode=mode,
            uid=uid,
            gid=gid,
        )

    def logs_argv(self, name: str, follow: bool, lines: int) -> list[str]:
        return self._host_argv("lxc-logs", name=name, follow=follow, lines=lines)

    def snapshot(self, name: str, snap: str) -> dict[str, str]:
        return dict(self._call("snapshot", name=name, snap=snap, timeout=None))

    def restore(self, name: str, snap: str) -> None:
        self._call("restore", name=name, snap=snap, timeout=None)

    def delete_snapshot(self, name: str, snap: str) -> None:
        self._call("delete_snapshot", name=name, snap=snap)

    def instances(self) -> list[str]:
        return list(self._call("instances"))

    def images(self) -> list[str]:
        return list(self._call("images"))

    def forget_image(self, digest: str) -> None:
        self._prepared.discard(digest)
        self._call("forget_image", digest=digest)

    def clean_stale(self) -> list[str]:
        return [f"{self.host}:{p}" for p in self._call("clean_stale")]
