"""The lxd backend's connection to LXD (local socket or a remote over HTTPS) and its ONE error translation.

Every pylxd/requests call of the backend runs inside `lxd_errors(...)`, which turns what LXD
or the transport raised into a BackendError with a hint: daemon not running, permission denied
(socket or an untrusted client certificate), name taken, not found.

A remote is `remote: https://HOST:8443` in a profile. sandbox authenticates with its own client
certificate, made on first use, and verifies the server with the server's certificate, which the
user copies from the remote once (LXD keeps it at /var/lib/lxd/server.crt):

    ~/.config/sandbox/lxd/client.crt, client.key    (SANDBOX_CONFIG overrides ~/.config/sandbox)
    ~/.config/sandbox/lxd/servercerts/HOST_PORT.crt (the remote's server.crt)

and on the remote: `lxc config trust add client.crt` (LXD 5.0: `lxc config trust add --name sandbox
client.crt`). The same directory is an `LXD_CONF` for the `lxc` client (remote `sandbox`), which
interactive exec and logs use.
"""

from __future__ import annotations

import datetime
import os
import socket
import stat
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pylxd
import pylxd.client
import pylxd.exceptions

from sandbox.backends.base import BackendError
from sandbox.backends.lxdconfig import remote_name
from sandbox.fsutil import atomic_write, file_lock

LOCAL_HINT = "start LXD with scripts/backends.sh lxd (as root)"
LXC_REMOTE = "sandbox"  # the remote's name in the lxc client's config (LXD_CONF)


def config_dir() -> Path:
    """sandbox's per-user config dir: $SANDBOX_CONFIG, $XDG_CONFIG_HOME/sandbox or ~/.config/sandbox.

    As root, never a directory that the calling user's environment chose (HOME, XDG_CONFIG_HOME
    survive `sudo -E`): root's own ~/.config/sandbox from the password database, or a
    $SANDBOX_CONFIG that root owns all the way up and no one else can write to.
    """
    env = os.environ.get("SANDBOX_CONFIG")
    if os.geteuid() != 0:
        if env:
            return Path(env)
        xdg = os.environ.get("XDG_CONFIG_HOME")
        return (Path(xdg) if xdg else Path.home() / ".config") / "sandbox"
    if env:
        if not root_only(Path(env)):
            raise BackendError(
                f"SANDBOX_CONFIG={env} is not a directory only root can write to",
                hint="as root, sandbox reads LXD client keys and server certificates only from a "
                "root-owned directory (not group/world-writable, nor any parent); unset SANDBOX_CONFIG",
            )
        return Path(env)
    import pwd

    return Path(pwd.getpwuid(0).pw_dir) / ".config" / "sandbox"


def root_only(path: Path) -> bool:
    """`path` (or, if absent, its nearest existing parent) is owned by root and writable by no one
    else, and so is every parent, except that a root-owned sticky parent such as /tmp may be
    world-writable: no one else can rename or remove root's entries in it. (Where part of `path` is
    still missing, its nearest existing parent must not be writable by others, sticky or not: they
    could make the missing name first.)"""
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p):
        p = p.parent
    for i, q in enumerate((p, *p.parents)):
        st = os.lstat(q)
        if st.st_uid != 0 or not stat.S_ISDIR(st.st_mode):
            return False
        sticky_parent = i > 0 and st.st_mode & stat.S_ISVTX
        if st.st_mode & 0o022 and not sticky_parent:
            return False
    return True


def lxd_dir() -> Path:
    return config_dir() / "lxd"


def client_cert() -> tuple[Path, Path]:
    """sandbox's client certificate and key for LXD remotes, made on first use (EC P-384, 10 years),
    under a lock: the hosts of an env are set up in parallel, and each must get the same pair."""
    d = lxd_dir()
    crt, key = d / "client.crt", d / "client.key"
    if crt.exists() and key.exists():
        return crt, key
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(d / ".client.lock"):
        if crt.exists() and key.exists():
            return crt, key
        cert_pem, key_pem = self_signed(f"sandbox@{socket.gethostname()}")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        atomic_write(crt, cert_pem)  # last: a certificate there means its key is there
    return crt, key


def self_signed(common_name: str, days: int = 3650, *, ca: bool = False) -> tuple[bytes, bytes]:
    """(certificate, key) PEM of a new self-signed EC P-384 certificate, as LXD's own are (`ca`: one
    that says CA:TRUE, which a pin refuses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pk = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pk.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    cert = builder.sign(pk, hashes.SHA384())
    key = pk.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key


def server_cert(remote: str) -> Path:
    return lxd_dir() / "servercerts" / f"{remote_name(remote)}.crt"


def lxc_conf(remote: str, project: str | None = None) -> Path:
    """An LXD_CONF dir for the `lxc` client that names `remote` "sandbox" (for exec -t and logs), in
    `project` (else LXD's default project)."""
    crt, key = client_cert()
    conf = lxd_dir() / f"lxc-{remote_name(remote)}"
    (conf / "servercerts").mkdir(parents=True, exist_ok=True)
    for src, dest in ((crt, conf / "client.crt"), (key, conf / "client.key")):
        if not dest.exists():
            dest.symlink_to(src)
    (conf / "servercerts" / f"{LXC_REMOTE}.crt").write_bytes(server_cert(remote).read_bytes())
    (conf / "config.yml").write_text(
        f"default-remote: local\nremotes:\n  {LXC_REMOTE}:\n    addr: {remote}\n"
        "    protocol: lxd\n    auth_type: tls\n    public: false\n"
        + (f"    project: {project}\n" if project else "")
    )
    return conf


def connect(remote: str | None, connect_timeout: float = 10, project: str | None = None) -> Any:
    """A pylxd Client of this host's LXD (unix socket) or of `remote` (HTTPS, client certificate),
    the server's certificate pinned by its fingerprint (pylxd's LXDSSLAdapter: the exact certificate,
    no CA and no host name), TCP keep-alive so that a call to a host that died fails in seconds.
    Every call of the client names `project` (None: LXD's default project)."""
    with lxd_errors("connecting to LXD", remote):
        if remote is None:
            return pylxd.Client(project=project)
        verify = server_cert(remote)
        if not verify.exists():
            raise BackendError(
                f"sandbox does not know the certificate of the LXD server {remote}",
                hint=f"copy the server's /var/lib/lxd/server.crt to {verify}",
            )
        crt, key = client_cert()
        from pylxd.client import get_session_for_url

        session = get_session_for_url(remote, verify=str(verify), cert=(str(crt), str(key)))
        session.mount(remote, _PinnedKeepalive())
        # pylxd pins the server certificate given as `verify`; with the environment trusted, requests
        # would replace it by $REQUESTS_CA_BUNDLE (and send LXD's traffic through any proxy)
        session.trust_env = False
        # a redirect is never followed: a compromised host's LXD could otherwise send this machine's
        # requests (and their bodies) to any address this machine reaches, and read the answers
        session.max_redirects = 0
        client = pylxd.Client(
            endpoint=remote,
            cert=(str(crt), str(key)),
            session=session,
            timeout=(connect_timeout, 60),
            project=project,
        )
        if not client.trusted:
            raise BackendError(
                f"the LXD server {remote} does not trust sandbox's client certificate",
                hint=f"on that host: lxc config trust add {crt} (copy the file there first)",
            )
        return client


def _keepalive_options() -> list[tuple[int, int, int]]:
    """A peer that stops answering is dropped after about 10 s, idle or mid-request."""
    from urllib3.connection import HTTPConnection

    return [
        *HTTPConnection.default_socket_options,
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 2),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
        (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 10_000),
    ]


class _PinnedKeepalive(pylxd.client.LXDSSLAdapter):  # type: ignore[misc]
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["socket_options"] = _keepalive_options()
        super().init_poolmanager(*args, **kwargs)


class PylxdImages:
    """The LxdImageApi of sandbox/imageformats/lxd.py over pylxd (every call's errors translated; the
    client's project is every call's)."""

    def __init__(self, client: Any, errors: Callable[[str], AbstractContextManager[None]]) -> None:
        self.client = client
        self.errors = errors

    def alias_target(self, alias: str) -> str | None:
        with self.errors(f"looking up image {alias}"):
            try:
                meta = self.client.api.images.aliases[alias].get().json().get("metadata")
            except pylxd.exceptions.NotFound:
                return None
        target = meta.get("target") if isinstance(meta, dict) else None
        return target if isinstance(target, str) else ""

    def has_image(self, fingerprint: str) -> bool:
        with self.errors(f"looking up image {fingerprint[:12]}"):
            return bool(self.client.images.exists(fingerprint))

    def upload(self, tarball: Path) -> str:
        with self.errors("importing an image"), open(tarball, "rb") as f:
            return str(self.client.images.create(f, public=False).fingerprint)

    def set_alias(self, alias: str, fingerprint: str, description: str, *, exists: bool) -> None:
        with self.errors(f"naming image {fingerprint[:12]} {alias}"):
            aliases = self.client.api.images.aliases
            if exists:
                aliases[alias].put(json={"target": fingerprint, "description": description})
            else:
                aliases.post(json={"name": alias, "target": fingerprint, "description": description})


@contextmanager
def lxd_errors(what: str, remote: str | None = None) -> Iterator[None]:
    """The one place where pylxd, requests and socket errors become BackendErrors."""
    try:
        yield
    except BackendError:
        raise
    except Exception as e:
        translate(e, what, remote)


def translate(e: Exception, what: str, remote: str | None) -> NoReturn:
    """Raise the BackendError (with a hint) for an exception of pylxd/requests."""
    where = remote or "this host"
    text = str(e).strip() or type(e).__name__
    low = text.lower()
    kind = type(e).__name__
    status = getattr(getattr(e, "response", None), "status_code", None)
    if kind == "SSLError" or "certificate verify failed" in low or "fingerprints did not match" in low:
        raise BackendError(
            f"{what}: the TLS certificate of {where} does not match: {text}",
            hint=f"put the server's current server.crt at {server_cert(remote or '')}",
        ) from e
    if (
        isinstance(e, PermissionError)
        or status == 403
        or "permission denied" in low
        or "not authorized" in low
    ):
        hint = (
            f"on {remote}: lxc config trust add {lxd_dir() / 'client.crt'}"
            if remote
            else "run sandbox as root, or as a member of the lxd group"
        )
        raise BackendError(f"{what}: permission denied by LXD on {where}: {text}", hint=hint) from e
    if kind in ("ClientConnectionFailed", "ConnectionError", "FileNotFoundError", "ConnectionRefusedError"):
        hint = (
            LOCAL_HINT
            if remote is None
            else f"check that {remote} is reachable and LXD listens there (core.https_address)"
        )
        raise BackendError(
            f"{what}: LXD is not running or not reachable on {where}: {text}", hint=hint
        ) from e
    if kind == "Conflict" or status == 409 or "already exists" in low:
        raise BackendError(
            f"{what}: the name is taken on {where}: {text}",
            hint="`sandbox gc` removes leftovers; another workspace on this LXD may use the same env name",
        ) from e
    if kind == "NotFound" or status == 404:
        raise BackendError(
            f"{what}: not found on {where}: {text}", hint="`sandbox ls` shows what exists"
        ) from e
    if kind == "Timeout" or isinstance(e, TimeoutError):
        raise BackendError(f"{what}: LXD on {where} did not answer in time: {text}", hint=LOCAL_HINT) from e
    raise BackendError(
        f"{what}: LXD on {where} failed: {text}", hint="see `lxc info --show-log NAME` on that host"
    ) from e
