"""SSH public key validation."""

from __future__ import annotations

import base64
import struct

import pytest

from sandbox.config.sshkeys import PRIVATE, parse_key_file, parse_public_key


def blob(key_type: str, body: bytes = b"\x01" * 32) -> str:
    raw = struct.pack(">I", len(key_type)) + key_type.encode() + struct.pack(">I", len(body)) + body
    return base64.b64encode(raw).decode()


def test_accepts_and_normalizes() -> None:
    b = blob("ssh-ed25519")
    assert (
        parse_public_key(f"  ssh-ed25519   {b}   alice@laptop  work\n")
        == f"ssh-ed25519 {b} alice@laptop work"
    )
    assert parse_public_key(f"ssh-ed25519 {b}") == f"ssh-ed25519 {b}"


@pytest.mark.parametrize("key_type", ["ssh-rsa", "ecdsa-sha2-nistp384", "sk-ssh-ed25519@openssh.com"])
def test_other_types(key_type: str) -> None:
    assert parse_public_key(f"{key_type} {blob(key_type)} c").startswith(key_type + " ")


def test_type_mismatch_and_bad_base64() -> None:
    with pytest.raises(ValueError, match="does not match"):
        parse_public_key(f"ssh-rsa {blob('ssh-ed25519')}")
    with pytest.raises(ValueError, match="base64"):
        parse_public_key("ssh-ed25519 not*base64")
    with pytest.raises(ValueError, match="key type"):
        parse_public_key("ssh-foo AAAA")


def test_simple_options_only() -> None:
    b = blob("ssh-ed25519")
    assert parse_public_key(f'restrict,from="10.0.0.0/8" ssh-ed25519 {b} x').startswith("restrict,from=")
    with pytest.raises(ValueError, match="not simple"):
        parse_public_key(f'command="/bin/sh" ssh-ed25519 {b}')


def test_errors_never_echo_input() -> None:
    secret = "SECRETSECRETSECRET"
    for text in (
        f"ssh-ed25519 {secret}",
        f"{secret} ssh-ed25519 {blob('ssh-ed25519')}",
        secret,
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{secret}\n-----END OPENSSH PRIVATE KEY-----",
    ):
        with pytest.raises(ValueError) as info:
            parse_public_key(text)
        assert secret not in str(info.value)


def test_private_keys_refused() -> None:
    for text in ("-----BEGIN RSA PRIVATE KEY-----\nabc\n", "PuTTY-User-Key-File-3: ssh-ed25519\n"):
        with pytest.raises(ValueError, match="PRIVATE"):
            parse_key_file(text)
    assert PRIVATE == "this is a PRIVATE key; give the .pub file"


def test_key_file_several_lines() -> None:
    a, b = blob("ssh-ed25519"), blob("ssh-rsa")
    text = f"# mine\n\nssh-ed25519 {a} one\n  ssh-rsa {b}\n"
    assert parse_key_file(text) == [f"ssh-ed25519 {a} one", f"ssh-rsa {b}"]
    with pytest.raises(ValueError, match="line 2"):
        parse_key_file(f"ssh-ed25519 {a}\nssh-ed25519 broken!\n")
    with pytest.raises(ValueError, match="no public key"):
        parse_key_file("# nothing\n")
