"""The docker backend on a production host: the docker SDK over the host's own engine socket.

The socket is forwarded by the same strict, multiplexed ssh connection the host agent uses
(`SshTransport.forward_unix`), so every call is the same DockerBackend code as on this machine. What
differs:

- **images** go to the host blob by blob (sandbox/hosts/ship.py, verified by sha256 there), then
  the host agent loads them into the engine from the host's own store (`docker-load`,
  sandbox/hostagent/dockerops.py): a new app layer moves KB, and a whole image never crosses the
  network twice;
- **addresses**: the address the control machine's state hands out is the instance's *slot*: it
  fixes the published port (below) and is never reused while the instance lives ("static-address").
  docker picks the container's own address on the workspace's network on the host
  (`sandbox-WORKSPACE`); nothing outside the host uses it. (Giving the container the slot address
  itself would put the workspace's subnet on two bridges of a host that also runs the workspace's
  lxc instances, and traffic would go to the wrong one.)
- **publishing**: each app port is published by docker on the host (all its addresses) at the port
  that follows from the instance's address, so the router and the health probes reach it at
  HOST_ADDRESS:PORT (the same scheme as lxc on hosts; sandbox/hosts/publishing.py);
- `exec -i` and `logs` run the local docker CLI against the forwarded socket;
- **no redirect is followed**: the SDK's requests session would follow one (an engine on a
  compromised host could send this machine's requests, bodies included, to any address it reaches,
  and read the answers); a redirect is an error, from the first request (the API version the SDK
  asks for while the client is made), as for LXD (sandbox/backends/lxdapi.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests

from sandbox.backends.base import BackendContext, BackendError, InstanceSpec
from sandbox.backends.docker import LABEL_WS, DockerBackend, _translated
from sandbox.backends.remote import OnHost
from sandbox.hosts.agent import HostAgent
from sandbox.hosts.publishing import published_port
from sandbox.hosts.ssh import FORWARD_HINT

#: the engine's socket on a host (forwarded here; the host agent's `docker-load` uses it too)
ENGINE_SOCKET = "/var/run/docker.sock"


class _NoRedirects(docker.APIClient):  # type: ignore[misc]
    """The SDK's API client (a requests session) that refuses every redirect instead of following it."""

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target is not None:
            raise requests.exceptions.TooManyRedirects(
                f"the engine answered a redirect to {str(target)[:100]!r}, which sandbox does not follow",
                response=resp,
            )
        return None


class _Engine(docker.DockerClient):  # type: ignore[misc]
    def __init__(self, **kwargs: Any) -> None:  # DockerClient.__init__ makes nothing but `api`
        self.api = _NoRedirects(**kwargs)


class RemoteDocker(OnHost, DockerBackend):
    """Instances of one workspace in the docker engine of one host (name: the host's name)."""

    name = "docker"
    capabilities = frozenset({"snapshot", "clone", "logs", "static-address"})

    def __init__(self, ctx: BackendContext, agent: HostAgent, host_address: str) -> None:
        super().__init__(ctx)
        self._on_host(agent, host_address)
        self._socket: str | None = None
        self.network_name = f"sandbox-{ctx.workspace_id}"

    # -- the engine, over the forwarded socket ---------------------------------------------
    def _connect(self) -> Any:
        self._socket = self._forwarded(ENGINE_SOCKET)
        return _Engine(base_url=f"unix://{self._socket}", timeout=120)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """As on this machine, and: when the engine does not answer because the host is gone (the
        forwarded socket dies with the ssh connection, within its keep-alive of about 6 s), the
        error is the transport's HostUnreachable naming the host, so a promotion stops safely."""
        try:
            with _translated(
                None,
                where=f"host {self.host}",
                down_hint=f"`sandbox host check PROFILE`: is dockerd running on {self.host}? {FORWARD_HINT}",
            ):
                yield
        except BackendError as e:
            if isinstance(e.__cause__, docker.errors.APIError):
                raise
            self._client = None  # the next call forwards the socket again
            self.agent.transport.run(["true"], timeout=30)  # raises HostUnreachable if the host is gone
            raise

    def _host_args(self) -> list[str]:
        if self._socket is None:
            self._socket = self._forwarded(ENGINE_SOCKET)
        return ["-H", f"unix://{self._socket}"]

    def check(self) -> None:
        self.agent.call("docker-ping", timeout=60)  # the engine answers on the host (its own error)
        super().check()

    # -- images: shipped by digest, loaded on the host ----------------------------------------
    def prepare_image(self, digest: str) -> None:
        if not self._loaded(digest):
            self.agent.call("docker-load", digest, timeout=None)

    # -- instances ---------------------------------------------------------------------------
    def _network_args(self) -> dict[str, Any]:
        return {"driver": "bridge", "labels": {LABEL_WS: self.ctx.workspace_id}}

    def _publish_at(self, spec: InstanceSpec) -> tuple[str, int | None]:
        if spec.address is None:
            return ("0.0.0.0", None)
        return ("0.0.0.0", published_port(spec.address, self.ctx.network.subnet))
