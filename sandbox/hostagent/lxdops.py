"""LXD on a host: `lxd-trust`, `lxd-import DIGEST`, `lxd-init`, and what `host-check lxd` finds.

The control machine speaks to a host's LXD over its HTTPS API with sandbox's client certificate
(sandbox/backends/remotelxd.py). Trust is set up here, over the ssh channel whose host key was
checked, never on first use over the network:

- `lxd-trust` (the first call of every command that uses the host) reads LXD's server certificate
  from LXD itself (GET /1.0 on its unix socket), which the control machine then pins; makes (or
  brings back to PROJECT_CONFIG) LXD's restricted project `sandbox`, whose default profile gets the
  root disk of the default project's; trusts the control machine's client certificate for that
  project alone (LXD 5.0: such a client cannot see or change other projects, the server's config,
  its trust store or its own project's restrictions), moving a trust of an earlier version (the
  `default` project) there; makes LXD listen on HTTPS if it does not (core.https_address: the
  host's address the control machine uses, when it is one of this host's, else every address; port
  8443), and reports the port and whether that address is this host's own; turns on IPv4
  forwarding, which LXD's routed NIC needs; and, before the project is restricted again, settles
  the publishing of the project's instances (lxdpublish.py: apps are published by the agent's DNAT
  rules, proxy devices an earlier version made are replaced and removed, rules made again after a
  reboot or removed for an instance that is gone);
- `lxd-import DIGEST` imports an image that is already in this host's store (shipped blob by blob
  and verified, sandbox/hosts/ship.py) into the project: the same unified tarball and import
  sequence as the control machine's lxd backend (sandbox/imageformats/lxd.py), written here from
  the local blobs, so an image never crosses the network whole; it answers LXD's fingerprint of the
  image, which the host's store recorded when it wrote the tarball (an alias is not trusted);
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
from sandbox.backends.lxdconfig import HOST_PROJECT, PROJECT_CONFIG, image_alias
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
PROJECT = HOST_PROJECT
IN_PROJECT = f"?project={PROJECT}"
#: made with the project; LXD refuses to change them while the project holds anything
FEATURES = [k for k in PROJECT_CONFIG if k.startswith("features.")]
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


def _project() -> str:
    """LXD's project `sandbox` as PROJECT_CONFIG says ("made", "restricted again" or "present"), its
    default profile with the root disk of the default project's (when that has one)."""
    done = "present"
    try:
        meta = call("GET", f"/1.0/projects/{PROJECT}").get("metadata")
        config = (meta.get("config") if isinstance(meta, dict) else None) or {}
    except LxdEngineError as e:
        if e.code != 404:
            raise
        body = {"name": PROJECT, "description": "sandbox's instances (restricted)", "config": PROJECT_CONFIG}
        call("POST", "/1.0/projects", body)
        config, done = dict(PROJECT_CONFIG), "made"
    if any(config.get(k) != PROJECT_CONFIG[k] for k in FEATURES):
        raise LxdEngineError(
            f"LXD's project {PROJECT} exists with other features than sandbox's own "
            f"({', '.join(f'{k}={config.get(k)}' for k in FEATURES)})",
            hint="it is not sandbox's: rename or remove it (`lxc project list`), then run the command again",
        )
    changed = {k: v for k, v in PROJECT_CONFIG.items() if config.get(k) != v}
    if changed:
        # the whole config: LXD 5.0.2's PATCH of a project drops the keys it is not sent (a feature
        # then reads as disabled, which LXD refuses for a project that holds anything)
        call("PATCH", f"/1.0/projects/{PROJECT}", {"config": {**config, **changed}})
        done = "restricted again"
    if root_disk(call("GET", f"/1.0/profiles/default{IN_PROJECT}").get("metadata")) is None:
        pool = root_disk(call("GET", "/1.0/profiles/default").get("metadata"))
        if pool is not None:  # else `host check` names the fix (host prepare)
            root = {"root": {"type": "disk", "path": "/", "pool": pool}}
            call("PATCH", f"/1.0/profiles/default{IN_PROJECT}", {"devices": root})
    return done


def _trust(der: bytes, name: str) -> str:
    """The client certificate trusted for the project alone: "added", "moved" (it was trusted for
    something else: the `default` project of earlier versions) or "present"."""
    fingerprint = hashlib.sha256(der).hexdigest()
    try:
        cert = call("GET", f"/1.0/certificates/{fingerprint}").get("metadata")
    except LxdEngineError as e:
        if e.code != 404:
            raise
        cert = None
    scope = {"restricted": True, "projects": [PROJECT]}
    if isinstance(cert, dict):
        if cert.get("restricted") is True and cert.get("projects") == [PROJECT]:
            return "present"
        call("PATCH", f"/1.0/certificates/{fingerprint}", scope)
        return "moved"
    request_ = {"type": "client", "certificate": base64.b64encode(der).decode(), "name": name, **scope}
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
    from sandbox.hostagent.lxdpublish import settle  # (it uses this module)

    published = settle()  # before the project blocks proxy devices again: LXD refuses while one is left
    project = _project()
    return {
        "certificate": env.get("certificate"),
        "port": port,
        "local": local,  # the address is this host's own: apps are published on it alone
        "listen": listen,
        "version": env.get("server_version"),
        "project": project,
        "trust": _trust(der, name),
        "published": published,
    }


# -- images ---------------------------------------------------------------------------------------


class HostImages:
    """The LxdImageApi of sandbox/imageformats/lxd.py over LXD's unix socket, in the project."""

    def alias_target(self, alias: str) -> str | None:
        try:
            meta = call("GET", f"/1.0/images/aliases/{alias}{IN_PROJECT}").get("metadata")
        except LxdEngineError as e:
            if e.code == 404:
                return None
            raise
        target = meta.get("target") if isinstance(meta, dict) else None
        return target if isinstance(target, str) else ""

    def has_image(self, fingerprint: str) -> bool:
        return _found(f"/1.0/images/{fingerprint}{IN_PROJECT}")

    def upload(self, tarball: Path) -> str:
        size = tarball.stat().st_size
        head = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with open(tarball, "rb") as f:
            doc = call("POST", f"/1.0/images{IN_PROJECT}", raw=f, headers=head, timeout=1800)
        return str(_wait(doc, 1800).get("fingerprint", ""))

    def set_alias(self, alias: str, fingerprint: str, description: str, *, exists: bool) -> None:
        if exists:
            body = {"target": fingerprint, "description": description}
            call("PUT", f"/1.0/images/aliases/{alias}{IN_PROJECT}", body)
        else:
            body = {"name": alias, "target": fingerprint, "description": description}
            call("POST", f"/1.0/images/aliases{IN_PROJECT}", body)


@op("lxd-import")
def lxd_import(args: list[str]) -> dict[str, Any]:
    images, digest = shipped("lxd-import", args, LxdEngineError)
    tmp = private_dir(host_root() / "tmp")
    remove_stale_temps([tmp], ("lxd",))  # a tarball whose agent died (its connection dropped)
    t0 = time.monotonic()
    alias = image_alias(digest)
    fingerprint, imported = import_lxd_image(images, digest, alias, HostImages(), tmp, null_sink)
    seconds = round(time.monotonic() - t0, 2)
    return {"alias": alias, "fingerprint": fingerprint, "imported": imported, "seconds": seconds}


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
