"""The lxd backend on a production host: the same LxdBackend, over the host's LXD HTTPS API.

What differs from a `remote:` LXD:

- **trust is set up over ssh**, never on first use over the network: the first call of a command
  asks the host agent (`lxd-trust`, sandbox/hostagent/lxdops.py) for LXD's server certificate, read
  from LXD on the host through the ssh connection whose host key was checked; sandbox pins that
  certificate (by its fingerprint, sandbox/backends/lxdapi.py) for every HTTPS call. The same call
  makes LXD's restricted project `sandbox` (HOST_PROJECT) and trusts sandbox's client certificate
  for that project alone, and makes LXD listen on HTTPS if it does not; its answer is checked
  (`trust_answer`) before use. Every HTTPS call names that project;
- **images** go to the host blob by blob (sandbox/hosts/ship.py, verified by sha256 there); the
  agent's `lxd-import` imports them into LXD from the host's own store, as the unified tarball the
  local backend imports (sandbox/imageformats/lxd.py): a whole image never crosses the network. It
  answers LXD's fingerprint of the image, checked there against the tarball's sha256 recorded in the
  host's store, and instances are made from that fingerprint (an alias is anyone's in the project);
- **publishing**: each instance's app is published on the host's addresses by the agent's DNAT rules
  (`lxd-publish`, sandbox/hostagent/lxdpublish.py: the lxc and libvirt scheme, never an LXD proxy
  device, which the project blocks), at the port that follows from the instance's address
  (sandbox/hosts/publishing.py), after the instance starts and removed before it is deleted; the
  router and the health probes use HOST_ADDRESS:PORT;
- **a dead host**: an HTTPS call that gets no connection or no answer (TCP keep-alive: about 10 s)
  is checked against the ssh transport, whose HostUnreachable names the host, so a promotion stops
  safely.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pylxd.exceptions

from sandbox.backends.base import BackendContext, BackendError, InstanceSpec
from sandbox.backends.lxd import LxdBackend
from sandbox.backends.lxdapi import client_cert, server_cert
from sandbox.backends.lxdconfig import HOST_PROJECT
from sandbox.backends.remote import OnHost
from sandbox.events import Event
from sandbox.fsutil import atomic_write
from sandbox.hosts.agent import HostAgent
from sandbox.hosts.publishing import published_port
from sandbox.hosts.transport import HostError

#: the most of a certificate sandbox takes from a host (LXD's is under 1 KiB)
MAX_CERT = 16 << 10
FINGERPRINT = re.compile(r"[0-9a-f]{64}")
PEM = re.compile(r"\s*-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----\s*")


def trust_answer(host: str, answer: object) -> tuple[bytes, int, bool]:
    """(server certificate PEM, HTTPS port, the host's address is its own) from a host's `lxd-trust`
    answer, or HostError: the host is not trusted to say anything else (one PEM certificate of
    bounded size, a port, a boolean)."""
    if not isinstance(answer, dict):
        raise HostError(f"host {host}: lxd-trust answered {type(answer).__name__}, not a document", host=host)
    pem, port, local = answer.get("certificate"), answer.get("port"), answer.get("local", False)
    if not isinstance(local, bool):
        raise HostError(f"host {host}: lxd-trust's `local` {str(local)[:40]!r} is not a boolean", host=host)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise HostError(f"host {host}: LXD's HTTPS port {str(port)[:40]!r} is not a port", host=host)
    if not isinstance(pem, str) or len(pem) > MAX_CERT or not PEM.fullmatch(pem):
        raise HostError(
            f"host {host}: LXD's server certificate is not one PEM certificate of at most {MAX_CERT} bytes",
            host=host,
        )
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as e:
        raise HostError(f"host {host}: LXD's server certificate does not parse: {e}", host=host) from e
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:  # pinned as `verify`, a CA would vouch for any certificate it signed
        raise HostError(f"host {host}: LXD's server certificate is a CA certificate", host=host)
    return pem.encode(), port, local


class RemoteLxd(OnHost, LxdBackend):
    """Instances of one workspace in the LXD of one host (name: the host's name in the profile)."""

    name = "lxd"
    capabilities = frozenset({"snapshot", "clone", "init", "logs", "static-address"})
    project = HOST_PROJECT

    def __init__(self, ctx: BackendContext, agent: HostAgent, host_address: str) -> None:
        self._url: str | None = None
        #: instance → what to publish once it starts (made or cloned in this command; the host agent
        #: records it and makes the rules again in every later command's `lxd-trust`)
        self._to_publish: dict[str, dict[str, Any]] = {}
        super().__init__(ctx)
        self._on_host(agent, host_address)

    @property
    def remote(self) -> str:
        """The HTTPS URL of the host's LXD, trusted both ways on first use (see the module's doc)."""
        if self._url is None:
            self._url = self._trust()
        return self._url

    @remote.setter
    def remote(self, value: str | None) -> None:  # Backend.__init__ sets None: a host has no `remote:`
        pass

    def _trust(self) -> str:
        crt, _ = client_cert()
        name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:55]
        request = {"cert": crt.read_text(), "name": f"sandbox@{name}", "address": self.host_address}
        pem, port, _ = trust_answer(self.host, self.agent.call("lxd-trust", request=request, timeout=60))
        url = f"https://{self.host_address}:{port}"
        pinned = server_cert(url)
        pinned.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not pinned.exists() or pinned.read_bytes() != pem:
            atomic_write(pinned, pem)
        return url

    @contextmanager
    def _api(self, what: str) -> Iterator[None]:
        """As for any LXD, and: a call that got no connection or no answer, because the host is
        gone, becomes the transport's HostUnreachable naming the host."""
        try:
            with super()._api(f"host {self.host}: {what}"):
                yield
        except BackendError as e:
            if isinstance(e.__cause__, pylxd.exceptions.LXDAPIException):
                raise  # LXD answered
            self._client = None  # the next call connects again
            self.agent.transport.run(["true"], timeout=30)  # raises HostUnreachable if the host is gone
            raise

    def check(self) -> None:
        self.remote  # noqa: B018 (the trust call: LXD answers, trusts sandbox, listens)
        super().check()

    def prepare_image(self, digest: str) -> None:
        """Once per command: the agent imports the image unless LXD holds it under the fingerprint
        recorded in the host's store, and answers that fingerprint, which instances are made from."""
        if digest in self._fingerprints:
            return
        self.sink(Event("progress", phase="up", message=f"{self.host}: image {digest[7:19]} in LXD"))
        done = self.agent.call("lxd-import", digest, timeout=None)
        fp = done.get("fingerprint") if isinstance(done, dict) else None
        if not isinstance(fp, str) or not FINGERPRINT.fullmatch(fp):
            raise HostError(
                f"host {self.host}: lxd-import answered no image fingerprint ({str(fp)[:80]!r})",
                host=self.host,
            )
        self._fingerprints[digest] = fp
        seconds = done.get("seconds")
        if isinstance(seconds, int | float) and done.get("imported"):
            self.sink(Event("log", phase="up", message=f"{self.host}: imported into LXD in {seconds:.1f}s"))

    def _remember(self, spec: InstanceSpec) -> None:
        if spec.app_port is not None and spec.address is not None:
            port = published_port(spec.address, self.ctx.network.subnet)
            self._to_publish[spec.name] = {"port": port, "address": spec.address, "app_port": spec.app_port}

    def create(self, spec: InstanceSpec) -> None:
        super().create(spec)
        self._remember(spec)

    def clone(self, src: str, spec: InstanceSpec) -> None:
        super().clone(src, spec)
        self._remember(spec)

    def _publishing(self, name: str, **request: Any) -> None:
        self.remote  # noqa: B018 (trusted first: lxd-trust settles the host's publishing)
        request = {"name": name, "workspace": self.ws_id, **request}
        self.agent.call("lxd-publish", request=request, timeout=120)

    def start(self, name: str) -> None:
        super().start(name)
        pub = self._to_publish.get(name)
        if pub is not None:  # (an instance made earlier: published already, made again by lxd-trust)
            self._publishing(name, **pub)

    def destroy(self, name: str) -> None:
        self._publishing(name, remove=True)
        super().destroy(name)

    def logs_argv(self, name: str, follow: bool, lines: int) -> list[str]:
        self._must(name)  # trusted and connected: the lxc client's config names the host's LXD
        return super().logs_argv(name, follow, lines)

    def clean_stale(self) -> list[str]:
        return []  # imports run on the host, where the agent clears what a dead import left
