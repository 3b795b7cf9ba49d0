"""The SSH transport (sandbox/hosts/ssh.py): its argv (strict options, the target after `--`), the
remote command line (shell-quoted, through `sudo -n` for a login user that is not root), how ssh's
own failures become errors that name the host, and a dead host failing fast.

`ssh -G` is run for real where a test needs it (it reads config, never connects). Failures are
classified from the texts OpenSSH 9 prints; the end-to-end tests against a loopback sshd are in
test_hosts_sshd.py.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import pytest

from sandbox.hosts import ssh as ssh_mod
from sandbox.hosts.ssh import SshTransport
from sandbox.hosts.transport import (
    Answers,
    HostAuthRefused,
    HostError,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    converse,
)

FP = "SHA256:q8rUoVxQmT0gYQJH1Hq0b3T0E1l9sCvkdBTkmk8bJ2c (ED25519)"

# what OpenSSH 9.2 writes to stderr (exit 255) in each case
UNKNOWN = (
    "No ED25519 host key is known for [10.0.0.11]:2222 and you have requested strict checking.\r\n"
    "Host key verification failed.\r\n"
)
CHANGED = (
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
    "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n"
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
    "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\n"
    "Someone could be eavesdropping on you right now (man-in-the-middle attack)!\r\n"
    "It is also possible that a host key has just been changed.\r\n"
    "The fingerprint for the ED25519 key sent by the remote host is\r\n"
    "SHA256:q8rUoVxQmT0gYQJH1Hq0b3T0E1l9sCvkdBTkmk8bJ2c.\r\n"
    "Please contact your system administrator.\r\n"
    "Add correct host key in /root/.ssh/known_hosts to get rid of this message.\r\n"
    "Offending ED25519 key in /root/.ssh/known_hosts:3\r\n"
    "Host key for [10.0.0.11]:2222 has changed and you have requested strict checking.\r\n"
    "Host key verification failed.\r\n"
)
AUTH = "deploy@10.0.0.11: Permission denied (publickey).\r\n"
TOO_MANY = "Received disconnect from 10.0.0.11 port 2222:2: Too many authentication failures\r\n"
UNREACHABLE = [
    "ssh: connect to host 10.0.0.11 port 2222: Connection refused\r\n",
    "ssh: connect to host 10.0.0.11 port 2222: Connection timed out\r\n",
    "ssh: connect to host 10.0.0.11 port 2222: No route to host\r\n",
    "ssh: Could not resolve hostname web9.example: Name or service not known\r\n",
    "Timeout, server 10.0.0.11 not responding.\r\n",
    "kex_exchange_identification: read: Connection reset by peer\r\n"
    "Connection reset by 10.0.0.11 port 2222\r\n",
    "",
]


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """An empty ssh config of the test's own: neither ~/.ssh/config nor /etc/ssh/ssh_config apply."""
    p = tmp_path / "ssh_config"
    p.write_text("")
    return p


def transport(tmp_path: Path, cfg: Path, target: str = "deploy@10.0.0.11:2222") -> SshTransport:
    return SshTransport("web1", target, ssh_config=cfg, control_root=tmp_path / "ctl")


def opts(options: list[str]) -> list[str]:
    return [options[i + 1] for i, o in enumerate(options) if o == "-o"]


# -- argv ----------------------------------------------------------------------------------------


def test_options_are_strict_and_multiplexed(tmp_path: Path, cfg: Path) -> None:
    t = transport(tmp_path, cfg)
    o = t.options()
    assert o[:2] == ["-F", str(cfg)]
    given = opts(o)
    for must in (
        "StrictHostKeyChecking=yes",
        "BatchMode=yes",
        "ForwardAgent=no",
        "ClearAllForwardings=yes",
        "ControlMaster=auto",
        "ControlPersist=60",
    ):
        assert must in given, must
    assert f"ControlPath={t.control_dir}/%C" in given
    assert t.control_dir.parent == tmp_path / "ctl"
    i = o.index("-l")
    assert o[i : i + 2] == ["-l", "deploy"] and o[o.index("-p") : o.index("-p") + 2] == ["-p", "2222"]


def test_no_user_no_port_no_config(tmp_path: Path) -> None:
    t = SshTransport("web1", "web1.example.com", control_root=tmp_path / "ctl")
    o = t.options()
    assert "-F" not in o and "-l" not in o and "-p" not in o
    assert "StrictHostKeyChecking=yes" in opts(o)


def test_the_target_comes_after_double_dash(
    tmp_path: Path, cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = transport(tmp_path, cfg)
    monkeypatch.setattr(t, "effective", lambda: {"user": "root"})
    argv = t.argv(["echo", "a b"])
    assert argv[0] == "ssh" and argv[1] == "-T"
    i = argv.index("--")
    assert argv[i + 1 :] == ["10.0.0.11", "echo 'a b'"]
    assert "10.0.0.11" not in argv[:i]  # nothing of the target is an option
    assert t.control_dir.is_dir() and (t.control_dir.stat().st_mode & 0o777) == 0o700
    assert t.argv(["true"], tty=True)[1] == "-t"


DEFAULT_CIPHERS = (
    "chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com"
)


@pytest.mark.parametrize(
    ("ciphers", "aes", "want"),
    [
        (
            DEFAULT_CIPHERS,
            True,
            "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr",
        ),
        (DEFAULT_CIPHERS, False, None),  # no AES instructions: chacha20 is the faster one
        ("aes256-ctr,chacha20-poly1305@openssh.com,aes128-gcm@openssh.com", True, None),  # the user's order
        ("chacha20-poly1305@openssh.com", True, None),  # the user's set: nothing is added to it
        ("", True, None),
    ],
)
def test_aes_gcm_goes_first_only_in_the_default_order_on_a_cpu_with_aes(
    tmp_path: Path, cfg: Path, monkeypatch: pytest.MonkeyPatch, ciphers: str, aes: bool, want: str | None
) -> None:
    t = transport(tmp_path, cfg)
    monkeypatch.setattr(t, "effective", lambda: {"user": "root", "ciphers": ciphers})
    monkeypatch.setattr(ssh_mod, "cpu_has_aes", lambda: aes)
    argv = t.argv(["true"])
    given = [o for o in opts(argv[: argv.index("--")]) if o.startswith("Ciphers=")]
    assert given == ([f"Ciphers={want}"] if want else [])


@pytest.mark.parametrize("bad", ["-oProxyCommand=sh", "a b", "x@y@z", "h:99999", "host;rm", "a..b", ""])
def test_a_bad_target_is_refused_before_any_ssh(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        SshTransport("web1", bad, control_root=tmp_path)


def test_remote_command_quotes_each_argument(
    tmp_path: Path, cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = transport(tmp_path, cfg)
    monkeypatch.setattr(t, "effective", lambda: {"user": "root"})
    argv = ["sh", "-c", 'echo "$0"; rm -rf /', "it's $(x) `y`", "a\nb", ""]
    line = t.remote_command(argv)
    assert shlex.split(line) == argv  # one word each, whatever it holds
    assert not line.startswith("sudo")


def test_remote_command_goes_through_sudo_for_another_user(
    tmp_path: Path, cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = transport(tmp_path, cfg)
    monkeypatch.setattr(t, "effective", lambda: {"user": "deploy"})
    line = t.remote_command(["python3", "/var/lib/x.pyz", "ping"])
    assert shlex.split(line) == ["sudo", "-n", "--", "python3", "/var/lib/x.pyz", "ping"]


def test_effective_reads_ssh_g(tmp_path: Path, cfg: Path) -> None:
    """Real `ssh -G` (no connection): the user and port of the target, the config's HostName."""
    cfg.write_text("Host web1alias\n  HostName 10.9.8.7\n  User other\n")
    eff = transport(tmp_path, cfg).effective()
    assert eff["user"] == "deploy" and eff["port"] == "2222" and eff["hostname"] == "10.0.0.11"
    assert eff["stricthostkeychecking"] == "true" and eff["batchmode"] == "yes"
    alias = SshTransport("web1", "web1alias", ssh_config=cfg, control_root=tmp_path)
    e2 = alias.effective()
    assert e2["hostname"] == "10.9.8.7" and e2["user"] == "other"
    assert shlex.split(alias.remote_command(["true"]))[:3] == ["sudo", "-n", "--"]
    root = SshTransport("web1", "root@10.0.0.11", ssh_config=cfg, control_root=tmp_path)
    assert root.remote_command(["true"]) == "true"


def test_effective_names_the_host_when_the_config_is_bad(tmp_path: Path, cfg: Path) -> None:
    cfg.write_text("NoSuchOption yes\n")
    with pytest.raises(HostError) as e:
        transport(tmp_path, cfg).effective()
    assert e.value.host == "web1" and "host web1" in e.value.message and e.value.hint


# -- classifying ssh's failures ------------------------------------------------------------------


@pytest.fixture
def tr(tmp_path: Path, cfg: Path, monkeypatch: pytest.MonkeyPatch) -> SshTransport:
    t = transport(tmp_path, cfg)
    monkeypatch.setattr(t, "fingerprints", lambda: [FP])
    return t


def test_unknown_host_key_shows_the_fingerprint(tr: SshTransport) -> None:
    err = tr.classify(UNKNOWN)
    assert isinstance(err, HostKeyUnknown) and err.host == "web1"
    assert "host web1 (deploy@10.0.0.11:2222)" in err.message and "SHA256:q8rUoV" in err.message
    assert err.hint and "known_hosts" in err.hint


def test_other_unknown_key_types_are_unknown_too(tr: SshTransport) -> None:
    text = "No ECDSA host key is known for web1 and you have requested strict checking.\r\n"
    assert isinstance(tr.classify(text), HostKeyUnknown)
    assert isinstance(tr.classify("Host key verification failed.\r\n"), HostKeyUnknown)


def test_changed_host_key(tr: SshTransport) -> None:
    err = tr.classify(CHANGED)
    assert isinstance(err, HostKeyChanged) and err.host == "web1"
    assert "CHANGED" in err.message and "host web1" in err.message
    assert err.hint and "ssh-keygen -R 10.0.0.11" in err.hint  # hostname from real ssh -G


@pytest.mark.parametrize("text", [AUTH, TOO_MANY])
def test_refused_keys(tr: SshTransport, text: str) -> None:
    err = tr.classify(text)
    assert isinstance(err, HostAuthRefused) and err.host == "web1"
    assert "host web1" in err.message and err.hint and "deploy" in err.hint


def test_sudo_wanting_a_password(tr: SshTransport) -> None:
    err = tr.classify("sudo: a password is required\n")
    assert isinstance(err, HostAuthRefused) and "sudo" in err.message and err.host == "web1"


@pytest.mark.parametrize("text", UNREACHABLE)
def test_unreachable(tr: SshTransport, text: str) -> None:
    err = tr.classify(text)
    assert isinstance(err, HostUnreachable) and err.host == "web1"
    assert "host web1 (deploy@10.0.0.11:2222) is unreachable" in err.message and err.hint


# -- running -------------------------------------------------------------------------------------


class FakeSsh:
    """Stands in for subprocess.run of the ssh client: counts calls, answers as told."""

    def __init__(self, code: int = 0, stderr: bytes = b"", timeout: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.code, self.stderr, self.timeout = code, stderr, timeout

    def __call__(self, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(cmd)
        if self.timeout:
            raise subprocess.TimeoutExpired(cmd, kw.get("timeout") or 0)
        return subprocess.CompletedProcess(cmd, self.code, b"out", self.stderr)


def fake_ssh(monkeypatch: pytest.MonkeyPatch, t: SshTransport, **kw: Any) -> FakeSsh:
    fake = FakeSsh(**kw)
    monkeypatch.setattr(t, "effective", lambda: {"user": "root", "hostname": "10.0.0.11"})
    monkeypatch.setattr(ssh_mod.subprocess, "run", fake)
    return fake


def test_a_dead_host_fails_fast_for_the_rest_of_the_command(
    tr: SshTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_ssh(monkeypatch, tr, code=255, stderr=UNREACHABLE[0].encode())
    with pytest.raises(HostUnreachable) as first:
        tr.run(["true"])
    with pytest.raises(HostUnreachable) as second:
        tr.run(["true"], input=b"x")
    assert len(fake.calls) == 1  # the second one never ran ssh
    assert second.value.host == "web1" and second.value.message == first.value.message


def test_a_timeout_is_unreachable_and_fails_fast_with_its_hint(
    tr: SshTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_ssh(monkeypatch, tr, timeout=True)
    with pytest.raises(HostUnreachable, match="did not answer within 7s") as first:
        tr.run(["sleep", "100"], timeout=7)
    with pytest.raises(HostUnreachable) as second:
        tr.run(["true"])
    assert len(fake.calls) == 1
    assert first.value.hint and second.value.hint == first.value.hint and second.value.host == "web1"


@pytest.mark.parametrize("text", [UNKNOWN, CHANGED, AUTH])
def test_other_ssh_failures_do_not_mark_the_host_dead(
    tr: SshTransport, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    fake = fake_ssh(monkeypatch, tr, code=255, stderr=text.encode())
    for _ in range(2):
        with pytest.raises(HostError) as e:
            tr.run(["true"])
        assert not isinstance(e.value, HostUnreachable)
    assert len(fake.calls) == 2


def test_a_command_failing_is_returned_not_raised(tr: SshTransport, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_ssh(monkeypatch, tr, code=3, stderr=b"Permission denied\n")
    assert tr.run(["false"]).returncode == 3
    assert len(fake.calls) == 1 and fake.calls[0][-1] == "false"


def test_sudo_refusing_is_auth_refused_not_a_command_failure(
    tr: SshTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sudo -n` exits 1 (not 255) when it wants a password: still the host's login problem."""
    fake_ssh(monkeypatch, tr, code=1, stderr=b"sudo: a password is required\n")
    with pytest.raises(HostAuthRefused, match="sudo"):
        tr.run(["true"])


def test_converse_reads_on_the_way_and_keeps_what_it_read() -> None:
    def talk(stdin: IO[bytes], answers: Answers) -> None:
        stdin.write(b"one\n")
        stdin.flush()
        assert answers.readline() == b"got one\n"
        stdin.write(b"two")

    p = converse(["sh", "-c", 'read -r a; echo "got $a"; cat; echo err >&2'], talk, timeout=30)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"got one\ntwo", b"err\n")


def test_converse_kills_what_takes_too_long_and_raises_what_talk_raises() -> None:
    def wait_for_an_answer(stdin: IO[bytes], answers: Answers) -> None:
        answers.readline()

    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        converse(["sleep", "100"], wait_for_an_answer, timeout=1)
    assert time.monotonic() - t0 < 10

    def fails(stdin: IO[bytes], answers: Answers) -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        converse(["cat"], fails, timeout=30)
