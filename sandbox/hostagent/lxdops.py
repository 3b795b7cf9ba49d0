"""LXD on a host: `lxd-trust`, `lxd-import DIGEST`, `lxd-init`, and what `host-check lxd` finds.

The control machine speaks to a host's LXD over its HTTPS API with sandbox's client certificate
(sandbox/backends/remotelxd.py). Trust is set up here, over the ssh channel whose host key was
checked, never on first use over the network:

- `lxd-trust` (the first call of every command that uses the host) reads LXD's server certificate
  from LXD itself (GET /1.0 on its unix socket), which the control machine then pins; adds the
  control machine's client certificate to LXD's trust store once, restricted to the `default`
  project (LXD 5.0: such a client cannot change the server's config or its trust store); makes LXD
  listen on HTTPS if it does not (core.https_address: the host's address the control machine uses,
  when it is one of this host's, else every address; port 8443), and reports the port and whether
  that address is this host's own (apps are then published on it alone); and turns on IPv4
  forwarding, which LXD's routed NIC needs;
- `lxd-import DIGEST` imports an image that is already in this host's store (shipped blob by blob
  and verified, sandbox/hosts/ship.py) into LXD: the same unified tarball and import sequence as
  the control machine's lxd backend (sandbox/imageformats/lxd.py), written here from the local
  blobs, so an image never crosses the network whole;
- `lxd-init` (`sandbox host prepare`) gives an uninitialised LXD what sandbox needs: a `dir`
  storage pool and a root disk in the default profile (no network: instances get routed NICs).

LXD is spoken to with the standard library (HTTP over its unix socket): no pylxd on a host.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import socket
import time
from pathlib import Path
from typing import IO, Any

from sandbox.backends.base import remove_stale_temps
from sandbox.backends.lxdconfig import image_alias
from sandbox.config import netvalues
from sandbox.errors import SandboxError
from sandbox.events import null_sink
from sandbox.fsutil import private_dir
from sandbox.hostagent.main import AgentUsage, host_root, op, read_request
from sandbox.hostagent.storeops import shipped
from sandbox.hostagent.unixhttp import UnixHTTP, request
from sandbox.imageformats.lxd import import_lxd_image

#: where LXD's socket is: Debian's package, then the snap
LXD_SOCKETS = ("/var/lib/lxd/unix.socket", "/var/snap/lxd/common/lxd/unix.socket")
HTTPS_PORT = 8443  # LXD's own default
PROJECT = "default"
POOL = "default"
MAX_CERT = 16 << 10
CERT_NAME = re.compile(r"[A-Za-z0-9@._-]{1,64}")
OPERATION = re.compile(r"/1\.0/operations/[0-9a-f-]{36}")
FORWARDING = Path("/proc/sys/net/ipv4/conf/all/forwarding")
FORWARDING_CONF = Path("/etc/sysctl.d/60-sandbox-lxd.conf")
DOWN_HINT = "`sandbox host prepare PROFILE` (installs and starts lxd), or start LXD on the host"


class LxdEngineError(SandboxError):
    """The host's LXD is missing, does not answer, or refused a request."""

    def __init__(self, message: str, hint: str | None = None, code: int = 0) -> None:
        super().__init__(message, hint)
        self.code = code


def lxd_socket() -> str:
    return next((s for s in LXD_SOCKETS if Path(s).exists()), LXD_SOCKETS[0])


def call(
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: IO[bytes] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    """One request to LXD's API: its answer document (an error answer is LxdEngineError)."""
    conn = UnixHTTP("LXD", lxd_socket(), timeout, LxdEngineError, DOWN_HINT)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    head = {"Content-Type": "application/json", **(headers or {})}
    status, answer = request(conn, method, path, body=data, headers=head)
    try:
        doc = json.loads(answer)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise LxdEngineError(f"LXD answered {method} {path} ({status}) with no JSON document")
    if doc.get("type") == "error" or status >= 400:
        code = doc.get("error_code")
        code = code if isinstance(code, int) and code else status
        raise LxdEngineError(f"LXD refused {method} {path}: {str(doc.get('error'))[:300]}", code=code)
    return doc


def _found(path: str) -> bool:
    try:
        call("GET", path)
    except LxdEngineError as e:
        if e.code == 404:
            return False
        raise
    return True


def _wait(doc: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The metadata of the finished background operation that `doc` started."""
    op_path = doc.get("operation")
    if not isinstance(op_path, str) or not OPERATION.fullmatch(op_path):
        raise LxdEngineError(f"LXD started no operation I can wait for: {str(op_path)[:80]!r}")
    done = call("GET", f"{op_path}/wait?timeout={int(timeout)}", timeout=timeout + 30).get("metadata")
    if not isinstance(done, dict) or done.get("status_code") != 200:
        why = done.get("err") or done.get("status") if isinstance(done, dict) else done
        raise LxdEngineError(f"LXD's operation failed: {str(why)[:300]}", hint="see `lxc operation list`")
    meta = done.get("metadata")
    return meta if isinstance(meta, dict) else {}


def server() -> dict[str, Any]:
    meta = call("GET", "/1.0", timeout=10).get("metadata")
    if not isinstance(meta, dict):
        raise LxdEngineError("LXD answered GET /1.0 with no server document")
    return meta


# -- trust ----------------------------------------------------------------------------------------


def https_port(value: str) -> int | None:
    """The port of a core.https_address as LXD reads it ("" is no listener; no port is 8443)."""
    v = value.strip()
    if not v:
        return None
    if v.startswith("["):
        _, _, port = v.partition("]")
        port = port.removeprefix(":")
    else:
        port = v.rpartition(":")[2] if v.count(":") == 1 else ""
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise LxdEngineError(f"LXD's core.https_address {v[:80]!r} has no valid port")
    return int(port) if port else HTTPS_PORT


def _is_local(address: str) -> bool:
    """`address` is one of this host's (a socket can be bound to it)."""
    with socket.socket() as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


def _listen(config: dict[str, Any], address: str, local: bool) -> tuple[str, int]:
    """Where LXD listens for HTTPS, made so if it does not: (core.https_address, port)."""
    current = str(config.get("core.https_address") or "")
    port = https_port(current)
    if port is not None:
        return current, port
    value = f"{address}:{HTTPS_PORT}" if local else f"[::]:{HTTPS_PORT}"
    call("PATCH", "/1.0", {"config": {"core.https_address": value}})
    return value, HTTPS_PORT


def client_der(pem: object) -> bytes:
    """The DER bytes of one PEM certificate (a request's `cert`), checked before LXD sees it."""
    if not isinstance(pem, str) or len(pem) > MAX_CERT:
        raise AgentUsage("`cert` must be one PEM certificate of at most 16 KiB")
    m = re.fullmatch(r"\s*-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----\s*", pem)
    try:
        der = base64.b64decode("".join(m.group(1).split()), validate=True) if m else b""
    except binascii.Error:
        der = b""
    if not der.startswith(b"\x30"):  # an X.509 certificate is a DER SEQUENCE
        raise AgentUsage("`cert` is not a PEM certificate")
    return der


def _trust(der: bytes, name: str) -> str:
    """Add the client certificate to LXD's trust store, once ("added" or "present")."""
    if _found(f"/1.0/certificates/{hashlib.sha256(der).hexdigest()}"):
        return "present"
    request_ = {
        "type": "client",
        "certificate": base64.b64encode(der).decode(),
        "name": name,
        "restricted": True,
        "projects": [PROJECT],
    }
    call("POST", "/1.0/certificates", request_)
    return "added"


def _forwarding() -> None:
    """IPv4 forwarding on: LXD refuses to start an instance with a routed NIC without it."""
    if FORWARDING.read_text().strip() != "1":
        FORWARDING.write_text("1\n")


@op("lxd-trust")
def lxd_trust(args: list[str]) -> dict[str, Any]:
    if args:
        raise AgentUsage("lxd-trust takes its request on stdin")
    req = read_request()
    if not isinstance(req, dict):
        raise AgentUsage("lxd-trust wants {cert, name, address}")
    der = client_der(req.get("cert"))
    name, address = req.get("name"), req.get("address")
    if not isinstance(name, str) or not CERT_NAME.fullmatch(name):
        raise AgentUsage(f"bad certificate name {str(name)[:80]!r}")
    try:
        address = netvalues.ipv4(address)
    except ValueError as e:
        raise AgentUsage(f"bad address {str(address)[:80]!r}") from e
    meta = server()
    env = meta.get("environment") or {}
    local = _is_local(address)
    listen, port = _listen(meta.get("config") or {}, address, local)
    _forwarding()
    return {
        "certificate": env.get("certificate"),
        "port": port,
        "local": local,  # the address is this host's own: apps are published on it alone
        "listen": listen,
        "version": env.get("server_version"),
        "trust": _trust(der, name),
    }


# -- images ---------------------------------------------------------------------------------------


class HostImages:
    """The LxdImageApi of sandbox/imageformats/lxd.py over LXD's unix socket."""

    def has_alias(self, alias: str) -> bool:
        return _found(f"/1.0/images/aliases/{alias}")

    def has_image(self, fingerprint: str) -> bool:
        return _found(f"/1.0/images/{fingerprint}")

    def upload(self, tarball: Path) -> str:
        size = tarball.stat().st_size
        head = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with open(tarball, "rb") as f:
            doc = call("POST", "/1.0/images", raw=f, headers=head, timeout=1800)
        return str(_wait(doc, 1800).get("fingerprint", ""))

    def add_alias(self, alias: str, fingerprint: str, description: str) -> None:
        call(
            "POST", "/1.0/images/aliases", {"name": alias, "target": fingerprint, "description": description}
        )


@op("lxd-import")
def lxd_import(args: list[str]) -> dict[str, Any]:
    images, digest = shipped("lxd-import", args, LxdEngineError)
    tmp = private_dir(host_root() / "tmp")
    remove_stale_temps([tmp], ("lxd",))  # a tarball whose agent died (its connection dropped)
    t0 = time.monotonic()
    alias = image_alias(digest)
    imported = import_lxd_image(images, digest, alias, HostImages(), tmp, null_sink)
    return {"alias": alias, "imported": imported, "seconds": round(time.monotonic() - t0, 2)}


# -- prepare and check ----------------------------------------------------------------------------


def root_disk(profile: object) -> str | None:
    """The pool of the default profile's root disk, or None (LXD is not initialised)."""
    devices = profile.get("devices") if isinstance(profile, dict) else None
    for d in (devices or {}).values():
        if isinstance(d, dict) and d.get("type") == "disk" and d.get("path") == "/":
            return str(d.get("pool") or "?")
    return None


@op("lxd-init")
def lxd_init(args: list[str]) -> dict[str, Any]:
    if args:
        raise AgentUsage("lxd-init takes no arguments")
    done = []
    if root_disk(call("GET", "/1.0/profiles/default").get("metadata")) is None:
        if not _found(f"/1.0/storage-pools/{POOL}"):
            call("POST", "/1.0/storage-pools", {"name": POOL, "driver": "dir", "config": {}})
            done.append(f"storage pool {POOL} (dir)")
        root = {"root": {"type": "disk", "path": "/", "pool": POOL}}
        call("PATCH", "/1.0/profiles/default", {"devices": root})
        done.append("a root disk in the default profile")
    if not FORWARDING_CONF.exists():
        FORWARDING_CONF.write_text(
            "# LXD's routed NICs (sandbox instances) need it\nnet.ipv4.conf.all.forwarding = 1\n"
        )
        done.append(str(FORWARDING_CONF))
    _forwarding()
    return {"done": done}


def status() -> tuple[bool, str, bool, str]:
    """For `host-check lxd`: (answers, what about the daemon, initialised, what about storage)."""
    try:
        meta = server()
        profile = call("GET", "/1.0/profiles/default", timeout=10).get("metadata")
    except LxdEngineError as e:
        return False, e.message, False, "LXD does not answer"
    env = meta.get("environment") or {}
    listen = str((meta.get("config") or {}).get("core.https_address") or "")
    where = f"HTTPS on {listen}" if listen else "HTTPS set up at first use"
    daemon = f"LXD {env.get('server_version', '?')} on {lxd_socket()}, {where}"
    pool = root_disk(profile)
    return True, daemon, pool is not None, f"root disk on pool {pool}" if pool else "no root disk"
