"""The SSH transport end to end against an sshd of the test's own on 127.0.0.1 (a free port), with a
host key and client keys made in the test's tmp dir: a command runs, the second one rides on the
multiplexed connection, an unknown host key is refused with its fingerprint, a key the host does not
know is refused.

The sshd needs its privilege-separation dir /run/sshd; when this machine has none, sshd runs in a
mount namespace of its own with a tmpfs on /run (nothing is created on the real /run). It is
stopped by its pid. Without the tools the tests are skipped, which fails them where integration is
required (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from sandbox.hosts.ssh import SshTransport
from sandbox.hosts.transport import Answers, HostAuthRefused, HostError, HostKeyUnknown, HostUnreachable
from tests.conftest import integration_required

SSHD = "/usr/sbin/sshd"


def sshd_problem() -> str | None:
    missing = [t for t in ("ssh", "ssh-keygen", "ssh-keyscan", SSHD) if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install openssh-client openssh-server)"
    if os.geteuid() != 0:
        return "a loopback sshd that logs root in needs root"
    if not Path("/run/sshd").is_dir() and shutil.which("unshare") is None:
        return "no /run/sshd and no unshare to give sshd one of its own"
    return None


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in map(int, kids):
        out += [k, *descendants(k)]
    return out


@dataclass
class Sshd:
    dir: Path
    port: int
    host_pub: str
    client_key: Path
    proc: subprocess.Popen[bytes] | None = None
    #: entries of the real /run that sessions still see when sshd gets a /run of its own (below)
    keep_run: tuple[str, ...] = ()
    #: dirs bind-mounted over others for sshd and its sessions only (a mount namespace of its own)
    binds: dict[str, Path] = field(default_factory=dict)
    ctl: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sbxt-", dir="/tmp")))
    opened: list[SshTransport] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"root@127.0.0.1:{self.port}"

    def client(self, name: str, *, known: bool = True, key: Path | None = None) -> SshTransport:
        """A transport with an ssh config of its own (its own control dir, known_hosts and key)."""
        kh = self.dir / f"known_hosts-{name}"
        kh.write_text(f"[127.0.0.1]:{self.port} {self.host_pub}\n" if known else "")
        cfg = self.dir / f"ssh_config-{name}"
        cfg.write_text(
            "Host *\n"
            f"  UserKnownHostsFile {kh}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            f"  IdentityFile {key or self.client_key}\n"
            "  IdentitiesOnly yes\n"
            "  IdentityAgent none\n"
            "  UpdateHostKeys no\n"
            "  PasswordAuthentication no\n"
            "  KbdInteractiveAuthentication no\n"
        )
        t = SshTransport("lo1", self.target, ssh_config=cfg, control_root=self.ctl)
        self.opened.append(t)
        return t

    def start(self) -> None:
        log = (self.dir / "sshd.log").open("ab")
        cmd = [SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")]
        setup = [
            f"mount --bind {shlex.quote(str(src))} {shlex.quote(dest)}" for dest, src in self.binds.items()
        ]
        if not Path("/run/sshd").is_dir():  # a /run of its own (a tmpfs)
            tmpfs = "mount -t tmpfs -o mode=755 sbxt /run && mkdir -m 755 /run/sshd"
            if self.keep_run:  # the real /run stays reachable below the dir `real`, to bind back from
                real = self.dir / "run.real"
                real.mkdir(exist_ok=True)
                setup += [f"mount --bind /run {real}", tmpfs]
                setup += [f"mkdir -p /run/{k} && mount --bind {real}/{k} /run/{k}" for k in self.keep_run]
            else:
                setup.append(tmpfs)
        if setup:  # in a private mount namespace
            script = " && ".join([*setup, 'exec "$@"'])
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *cmd]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"the loopback sshd did not start: {(self.dir / 'sshd.log').read_text()[-2000:]}")

    def stop_listener(self) -> None:
        """Stop the listening sshd only (by its pid): sessions already open live on."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)

    def stop(self) -> None:
        for t in self.opened:
            t.close()
        if self.proc is None:
            return
        left = descendants(self.proc.pid)
        self.stop_listener()
        for pid in left:  # session processes of this sshd (children of the pid we started)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        shutil.rmtree(self.ctl, ignore_errors=True)


def make_sshd(
    d: Path,
    extra_config: str = "",
    keep_run: tuple[str, ...] = (),
    binds: dict[str, Path] | None = None,
) -> Sshd:
    """An sshd on 127.0.0.1 (not started) with its keys and config in the new dir `d`, logging root
    in; `extra_config` is added to its sshd_config (e.g. `SetEnv` for its sessions)."""
    problem = sshd_problem()
    if problem is not None:
        (pytest.fail if integration_required() else pytest.skip)(f"loopback sshd: {problem}")
    d.mkdir()
    host_pub = keygen(d / "host_key")
    client_pub = keygen(d / "client_key")
    (d / "authorized_keys").write_text(client_pub + "\n")
    port = free_port()
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        # (a unix socket forward needs both: forward_unix)
        "AllowTcpForwarding local\nAllowStreamLocalForwarding local\n"
        "X11Forwarding no\nPrintMotd no\nMaxStartups 100\n" + extra_config
    )
    return Sshd(d, port, host_pub, d / "client_key", keep_run=keep_run, binds=dict(binds or {}))


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    s = make_sshd(tmp_path / "sshd")
    try:
        s.start()
        yield s
    finally:
        s.stop()
    assert len(str(s.ctl)) < 40  # unix socket paths stay far below 107 bytes


def control_sockets(t: SshTransport) -> list[Path]:
    return [p for p in t.control_dir.iterdir() if p.is_socket()] if t.control_dir.is_dir() else []


def test_a_command_runs_and_the_next_one_reuses_the_connection(sshd: Sshd) -> None:
    t = sshd.client("ok")
    p = t.run(["sh", "-c", 'printf "%s|" "$@"; cat', "sh", "a b", "it's"], input=b"stdin\n")
    assert p.returncode == 0 and p.stdout == b"a b|it's|stdin\n", p.stderr
    [sock] = control_sockets(t)
    assert len(str(sock)) < 108
    check = subprocess.run(["ssh", *t.options(), "-O", "check", "--", "127.0.0.1"], capture_output=True)
    assert check.returncode == 0, check.stderr

    # no new connection is possible any more; the multiplexed one still carries commands
    sshd.stop_listener()
    fresh = sshd.client("fresh")
    with pytest.raises(HostUnreachable) as e:
        fresh.run(["true"], timeout=20)
    assert e.value.host == "lo1"
    t0 = time.monotonic()
    p = t.run(["sh", "-c", "exit 7"])
    assert p.returncode == 7 and time.monotonic() - t0 < 5
    assert control_sockets(t) == [sock]

    t.close()
    assert control_sockets(t) == []


def test_a_command_is_talked_to_both_ways_in_one_session(sshd: Sshd) -> None:
    """Transport.talk: a line written, its answer read while the command runs, more written; the
    result holds all it wrote. A host that is gone is unreachable, as for `run`."""
    t = sshd.client("talk")
    heard: list[bytes] = []

    def talk(stdin: IO[bytes], answers: Answers) -> None:
        stdin.write(b"hello\n")
        stdin.flush()
        heard.append(answers.readline())
        stdin.write(b"rest")

    p = t.talk(["sh", "-c", 'read -r a; echo "got $a"; cat; exit 4'], talk, timeout=30)
    assert heard == [b"got hello\n"] and (p.returncode, p.stdout) == (4, b"got hello\nrest"), p.stderr
    sshd.stop_listener()
    with pytest.raises(HostUnreachable):
        sshd.client("talk-down").talk(["true"], talk, timeout=20)
    t.close()


def test_an_unknown_host_key_is_refused_with_its_fingerprint(sshd: Sshd) -> None:
    t = sshd.client("unknown", known=False)
    with pytest.raises(HostKeyUnknown) as e:
        t.run(["true"])
    fp = subprocess.run(
        ["ssh-keygen", "-lf", str(sshd.dir / "host_key.pub")], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert fp.startswith("SHA256:") and fp in e.value.message
    assert e.value.host == "lo1" and "host lo1" in e.value.message and e.value.hint
    assert "[127.0.0.1]" not in (sshd.dir / "known_hosts-unknown").read_text()  # never accepted


def test_a_key_the_host_does_not_know_is_refused(sshd: Sshd) -> None:
    other = sshd.dir / "other_key"
    keygen(other)
    t = sshd.client("stranger", key=other)
    with pytest.raises(HostAuthRefused) as e:
        t.run(["true"])
    assert e.value.host == "lo1" and "Permission denied" in e.value.message
    # not a dead host: the next call tries again
    with pytest.raises(HostAuthRefused):
        t.run(["true"])


def test_a_stopped_sshd_is_unreachable(sshd: Sshd) -> None:
    sshd.stop_listener()
    t = sshd.client("down")
    with pytest.raises(HostUnreachable, match="Connection refused") as e:
        t.run(["true"])
    assert e.value.host == "lo1"


def test_a_unix_socket_on_the_host_is_forwarded_over_the_multiplexed_connection(sshd: Sshd) -> None:
    """forward_unix (a host's docker socket, in production): the local socket reaches the remote one,
    asking twice gives the same path, and a refused forward names the host."""
    remote = sshd.dir / "engine.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(remote))
    server.listen(4)
    server.settimeout(10)
    t = sshd.client("fwd")
    local = t.forward_unix(str(remote))
    assert local.parent == t.control_dir and len(str(local)) < 108
    assert t.forward_unix(str(remote)) == local  # again: a no-op, the same path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(str(local))
        conn, _ = server.accept()
        with conn:
            c.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.sendall(b"pong")
            assert c.recv(4) == b"pong"
    server.close()
    # ordinary commands keep forwarding cleared: the option is only left off for the forward request
    assert "ClearAllForwardings=yes" in t.options()


def test_a_forward_is_refused_when_the_ssh_config_sets_up_forwardings(sshd: Sshd) -> None:
    """`-O forward` would send the master the config's RemoteForward too (a way from the host back
    into this machine): forward_unix refuses, naming the host and the line."""
    t = sshd.client("cfgfwd")
    assert t.ssh_config is not None
    t.ssh_config.write_text(t.ssh_config.read_text() + "  RemoteForward 15432 127.0.0.1:5432\n")
    with pytest.raises(HostError) as e:
        t.forward_unix(str(sshd.dir / "engine.sock"))
    assert e.value.host == "lo1" and "remoteforward 15432" in e.value.message.lower()
    assert e.value.hint is not None and "RemoteForward" in e.value.hint
