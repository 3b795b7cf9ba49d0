"""The SSH transport: the user's own OpenSSH, multiplexed, with strict host-key checking.

Why OpenSSH and not asyncssh: the user's `~/.ssh/config` (aliases, ProxyJump, IdentityFile), agent
and `known_hosts` apply exactly as they do for `ssh` at the shell, with no second implementation of
them, and sandbox never holds a private key (ssh reads it, or asks the agent). Multiplexing is
OpenSSH's `ControlMaster`: the first command to a host opens one connection (~0.35 s), the next ones
ride on it (a few ms); `ControlPersist` closes it a minute after the last use.

Strictness is on the command line, which wins over any config file: `StrictHostKeyChecking=yes`
(an unknown host key is an error that shows its fingerprint, never accepted), `BatchMode=yes` (no
password or passphrase prompt hangs a command), no agent forwarding and no forwarding from any
config file. The target is parsed (config/hostvalues.py) and given after `--`, so nothing from a
profile can become an ssh option.

The one forwarding sandbox asks for itself is `forward_unix`: a host's docker socket, reached over
the same multiplexed, strict connection (`ssh -O forward -L LOCAL:REMOTE`), so the docker SDK speaks
to that host's engine without a second way in (docker's own `ssh://` starts its own ssh with the
user's defaults and needs the docker CLI on the host).

Cipher: where ssh would pick chacha20-poly1305 first (OpenSSH's default order) and this CPU has AES
instructions, the AES-GCM ciphers of the same list go first: several times faster per byte there,
which shipping an image to a host on a fast link feels (ssh's encryption is a large share of the
CPU it takes). The set of ciphers is the user's own; a list the user ordered otherwise is kept.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import IO

from sandbox.config.hostvalues import SshTarget, ssh_target
from sandbox.hosts.transport import (
    Completed,
    HostAuthRefused,
    HostError,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    Talk,
    converse,
)

#: the control sockets (a unix socket path has at most 107 bytes: keep it short, not in the workspace)
CONTROL_ROOT = Path("/run/sandbox-ssh")
#: a dead host is noticed within ServerAliveInterval * ServerAliveCountMax seconds
ALIVE_INTERVAL = 2
ALIVE_COUNT = 3
#: why a forwarded socket may not answer (sshd refuses the channel and only its log says so)
FORWARD_HINT = (
    "the host's sshd must allow socket forwarding: AllowTcpForwarding and AllowStreamLocalForwarding "
    "not `no` (OpenSSH checks both), no DisableForwarding"
)
#: what `sudo -n` says (exit 1) when the login user may not run it without a password
_SUDO_REFUSED = re.compile(rb"\s*sudo: (a password is required|a terminal is required)")


class SshTransport:
    """Commands on one host over ssh (name: the host's name in the profile, for every message)."""

    sessions = True

    def __init__(
        self,
        name: str,
        target: str,
        ssh_config: Path | None = None,
        connect_timeout: float = 5.0,
        control_root: Path = CONTROL_ROOT,
    ) -> None:
        self.name = name
        self.target: SshTarget = ssh_target(target)
        self.ssh_config = ssh_config
        self.connect_timeout = connect_timeout
        key = hashlib.sha256(f"{ssh_config}|{os.getuid()}".encode()).hexdigest()[:10]
        self.control_dir = control_root / key
        self._effective: dict[str, str] | None = None
        #: once a host did not answer, the rest of this command fails fast instead of waiting again
        self._dead: HostUnreachable | None = None

    # -- argv ----------------------------------------------------------------
    def options(self, clear_forwardings: bool = True) -> list[str]:
        opts = ["-F", str(self.ssh_config)] if self.ssh_config is not None else []
        for o in (
            "BatchMode=yes",
            "StrictHostKeyChecking=yes",
            "ForwardAgent=no",
            # (a forward request to the master must not clear its own -L: forward_unix)
            *(["ClearAllForwardings=yes"] if clear_forwardings else []),
            "StreamLocalBindUnlink=yes",
            "ControlMaster=auto",
            f"ControlPath={self.control_dir}/%C",
            "ControlPersist=60",
            f"ConnectTimeout={max(1, int(self.connect_timeout))}",
            f"ServerAliveInterval={ALIVE_INTERVAL}",
            f"ServerAliveCountMax={ALIVE_COUNT}",
            "LogLevel=ERROR",
        ):
            opts += ["-o", o]
        if self.target.user:
            opts += ["-l", self.target.user]
        if self.target.port:
            opts += ["-p", str(self.target.port)]
        return opts

    def effective(self) -> dict[str, str]:
        """What ssh will use for this target after every config file (`ssh -G`): hostname, user, port."""
        if self._effective is None:
            p = subprocess.run(
                ["ssh", "-G", *self.options(), "--", self.target.host],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if p.returncode != 0:
                raise HostError(
                    f"host {self.name}: ssh cannot read its config for {self.target}: {p.stderr.strip()}",
                    hint="check ~/.ssh/config (or settings hosts.ssh_config)",
                    host=self.name,
                )
            out: dict[str, str] = {}
            for line in p.stdout.splitlines():
                k, _, v = line.partition(" ")
                out.setdefault(k.lower(), v)
            self._effective = out
        return self._effective

    def remote_command(self, argv: Sequence[str]) -> str:
        """argv as one shell-quoted command line (ssh hands the remote shell a string); through
        `sudo -n` when the login user is not root."""
        cmd = list(argv)
        if self.effective().get("user", "root") != "root":
            cmd = ["sudo", "-n", "--", *cmd]
        return shlex.join(cmd)

    def cipher_options(self) -> list[str]:
        """`-o Ciphers=` with the AES-GCM ones of the effective list first, when that list puts
        chacha20-poly1305 first (OpenSSH's default) and this CPU has AES instructions; else none."""
        ciphers = self.effective().get("ciphers", "").split(",")
        gcm = [c for c in ciphers if c.startswith("aes") and c.endswith("-gcm@openssh.com")]
        if not gcm or not ciphers[0].startswith("chacha20-poly1305") or not cpu_has_aes():
            return []
        return ["-o", "Ciphers=" + ",".join(gcm + [c for c in ciphers if c not in gcm])]

    def argv(self, argv: Sequence[str], tty: bool = False) -> list[str]:
        self.control_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return [
            "ssh",
            *(["-t"] if tty else ["-T"]),
            *self.options(),
            *self.cipher_options(),
            "--",
            self.target.host,
            self.remote_command(argv),
        ]

    # -- running -------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        stdin: IO[bytes] | None = None,
        timeout: float | None = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        def start(cmd: list[str]) -> Completed:
            if input is not None:
                return subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, check=False)
            return subprocess.run(
                cmd,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )

        return self._checked(argv, start, timeout)

    def talk(self, argv: Sequence[str], talk: Talk, *, timeout: float | None = 60) -> Completed:
        return self._checked(argv, lambda cmd: converse(cmd, talk, timeout), timeout)

    def _checked(
        self, argv: Sequence[str], start: Callable[[list[str]], Completed], timeout: float | None
    ) -> Completed:
        """`start(the ssh command line)`, with what ssh itself says (exit 255: no connection, a host
        key, auth) raised as HostError and a host that did not answer in time remembered as dead."""
        if self._dead is not None:
            raise self._dead
        cmd = self.argv(argv)
        try:
            p = start(cmd)
        except subprocess.TimeoutExpired as e:
            raise self.gone(f" did not answer within {timeout:.0f}s") from e
        err = self.failure(p.returncode, p.stderr)
        if err is not None:
            raise err
        return p

    def spawn(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        if self._dead is not None:
            raise self._dead
        return subprocess.Popen(
            self.argv(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def failure(self, code: int, stderr: bytes) -> HostError | None:
        """ssh's own failure (exit 255: no connection, a host key, auth; `sudo -n` refusing exits 1,
        not 255, with its own message) as a HostError; a host that did not answer is remembered as
        dead. None for the command's own exit."""
        if code == 255 or (code == 1 and _SUDO_REFUSED.match(stderr)):
            err = self.classify(stderr.decode(errors="replace"))
            if isinstance(err, HostUnreachable):
                self._dead = err
            return err
        return None

    def gone(self, what: str) -> HostUnreachable:
        """The host stopped answering (`what` follows its name): it stays unreachable for the rest of
        this command."""
        self._dead = HostUnreachable(
            f"host {self.name} ({self.target}){what}",
            hint="is the host up and its network reachable? `sandbox host check PROFILE`",
            host=self.name,
        )
        return self._dead

    def forward_unix(self, remote: str) -> Path:
        """A local unix socket that reaches the unix socket `remote` on the host, forwarded by the
        multiplexed connection (opened first if need be); the same path for the same remote. It lives
        as long as that connection (ControlPersist), so each command asks again: a repeat is a no-op."""
        key = hashlib.sha256(f"{self.target}|{remote}".encode()).hexdigest()[:12]
        local = self.control_dir / f"fwd-{key}"
        self._no_config_forwards()
        self.run(["true"], timeout=self.connect_timeout + 30)  # the master, and a live host
        cmd = [
            "ssh",
            *self.options(clear_forwardings=False),
            "-O",
            "forward",
            "-L",
            f"{local}:{remote}",
            "--",
            self.target.host,
        ]
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
        except subprocess.TimeoutExpired as e:
            raise self.gone(": its ssh connection did not take the forward in 30 s") from e
        if p.returncode != 0:
            raise HostError(
                f"host {self.name}: cannot forward {remote}: {p.stderr.decode(errors='replace').strip()}",
                hint=FORWARD_HINT,
                host=self.name,
            )
        return local

    def _no_config_forwards(self) -> None:
        """A forward request sends the master every forwarding ssh would set up for this target,
        those of the config files too (LocalForward, RemoteForward, DynamicForward), which the
        other commands clear: refuse rather than open a way from the host back into this machine."""
        p = subprocess.run(
            ["ssh", "-G", *self.options(clear_forwardings=False), "--", self.target.host],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        found = [
            line.strip()
            for line in p.stdout.splitlines()
            if line.split(" ", 1)[0].lower() in ("localforward", "remoteforward", "dynamicforward")
        ]
        if p.returncode != 0 or found:
            raise HostError(
                f"host {self.name}: the ssh config sets up forwardings for {self.target} "
                f"({'; '.join(found[:3]) or p.stderr.strip()[:200]}); sandbox will not forward the "
                "docker socket on that connection, as it would open them too",
                hint="remove LocalForward/RemoteForward/DynamicForward for this host from the ssh config "
                "(or give sandbox its own: settings hosts.ssh_config)",
                host=self.name,
            )

    def close(self) -> None:
        """End the multiplexed connection (if one is open)."""
        if self.control_dir.is_dir():
            p = subprocess.run(
                ["ssh", *self.options(), "-O", "exit", "--", self.target.host],
                capture_output=True,
                timeout=10,
                check=False,
            )
            # the master removes its socket after it answered; the connection is closed
            # only when the socket is gone (a next command would otherwise find it)
            deadline = time.monotonic() + 5
            while (
                p.returncode == 0
                and time.monotonic() < deadline
                and any(f.is_socket() and not f.name.startswith("fwd-") for f in self.control_dir.iterdir())
            ):
                time.sleep(0.02)

    # -- errors --------------------------------------------------------------
    def classify(self, stderr: str) -> HostError:
        """ssh's own failure (exit 255) as an error that names the host and says what to do."""
        where = f"host {self.name} ({self.target})"
        text = stderr.strip()
        last = text.splitlines()[-1] if text else "ssh failed"
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or ("Host key for" in text and "changed" in text):
            return HostKeyChanged(
                f"{where}: its host key CHANGED since it was recorded in known_hosts; sandbox stops",
                hint="if the host was reinstalled, check the new key out of band, then "
                f"`ssh-keygen -R {self.effective().get('hostname', self.target.host)}` and add it",
                host=self.name,
            )
        if (
            "Host key verification failed" in text
            or "No ED25519 host key is known" in text
            or ("host key" in text.lower() and "known" in text.lower())
        ):
            fps = self.fingerprints()
            return HostKeyUnknown(
                f"{where}: its host key is not in known_hosts"
                + (f"; the host offers {'; '.join(fps)}" if fps else ""),
                hint="compare it on the host (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), "
                f"then `ssh {self.target}` once and accept it, or add it to known_hosts",
                host=self.name,
            )
        if "Permission denied" in text or "Too many authentication failures" in text:
            return HostAuthRefused(
                f"{where} refused every key offered: {last}",
                hint=f"authorise your public key for {self.effective().get('user', '?')} on the host "
                "(ssh-copy-id), or load the key into ssh-agent",
                host=self.name,
            )
        if re.search(r"sudo: (a password is required|a terminal is required)", text):
            return HostAuthRefused(
                f"{where}: the login user may not run sudo without a password",
                hint="give it `NOPASSWD` for sudo, or log in as root",
                host=self.name,
            )
        return HostUnreachable(
            f"{where} is unreachable: {last}",
            hint="is the host up, its sshd running and its address right? `sandbox host check PROFILE`",
            host=self.name,
        )

    def fingerprints(self) -> list[str]:
        """The SHA256 fingerprints of the keys the host offers (to show, never to accept)."""
        eff = self.effective()
        host, port = eff.get("hostname", self.target.host), eff.get("port", "22")
        try:
            scan = subprocess.run(
                ["ssh-keyscan", "-T", "3", "-p", port, "--", host],
                capture_output=True,
                timeout=10,
                check=False,
            )
            if not scan.stdout:
                return []
            p = subprocess.run(
                ["ssh-keygen", "-lf", "-"], input=scan.stdout, capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [" ".join(line.split()[1:2] + line.split()[-1:]) for line in p.stdout.decode().splitlines()]


@cache
def cpu_has_aes() -> bool:
    """This CPU has AES instructions (x86 AES-NI, the ARMv8 crypto extension): /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(
        line.split(":", 1)[0].strip() in ("flags", "Features") and "aes" in line.split(":", 1)[1].split()
        for line in text.splitlines()
        if ":" in line
    )
