"""Validate SSH public keys. Error messages never contain any part of the input text."""

from __future__ import annotations

import base64
import binascii
import re
import struct

KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
PRIVATE = "this is a PRIVATE key; give the .pub file"
_PRIVATE_MARKERS = ("PRIVATE KEY-----", "PuTTY-User-Key-File", "-----BEGIN OPENSSH PRIVATE KEY-----")
# authorized_keys options we pass through: flags, and from="..." without spaces or quotes inside.
_FLAGS = frozenset(
    {
        "restrict",
        "no-agent-forwarding",
        "no-port-forwarding",
        "no-pty",
        "no-user-rc",
        "no-x11-forwarding",
        "agent-forwarding",
        "port-forwarding",
        "pty",
        "user-rc",
        "x11-forwarding",
        "no-touch-required",
        "verify-required",
    }
)
_FROM = re.compile(r'from="[A-Za-z0-9.:*?!/,-]+"')


def looks_private(text: str) -> bool:
    """True when the text contains a private key (OpenSSH/PEM/PuTTY)."""
    return any(marker in text for marker in _PRIVATE_MARKERS)


def _simple_options(field: str) -> bool:
    parts = field.split(",")
    return all(p.lower() in _FLAGS or _FROM.fullmatch(p) for p in parts)


def _check_blob(key_type: str, blob: str) -> None:
    try:
        data = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key data is not valid base64") from None
    if len(data) < 4:
        raise ValueError("the key data is too short")
    (length,) = struct.unpack(">I", data[:4])
    if data[4 : 4 + length] != key_type.encode():
        raise ValueError("the key data does not match its key type")


def parse_public_key(text: str) -> str:
    """Check one public key line; return it normalized as "[options ]type base64[ comment]".

    Raises ValueError whose message never includes the input.
    """
    if looks_private(text):
        raise ValueError(PRIVATE)
    line = text.strip()
    if not line:
        raise ValueError("empty key")
    if "\n" in line or "\r" in line:
        raise ValueError("a key must be a single line")
    if line.startswith("---- BEGIN SSH2 PUBLIC KEY"):
        raise ValueError("RFC 4716 keys are not supported; convert with: ssh-keygen -i -f KEY.pub")
    words = line.split()
    options = ""
    if words[0] not in KEY_TYPES:
        if len(words) < 2 or words[1] not in KEY_TYPES:
            raise ValueError("not an SSH public key (unknown or missing key type)")
        if not _simple_options(words[0]):
            raise ValueError(
                "the authorized_keys options are not simple; only flags like "
                'restrict/no-pty and from="..." are accepted'
            )
        options, words = words[0] + " ", words[1:]
    if len(words) < 2:
        raise ValueError("the key data is missing")
    key_type, blob = words[0], words[1]
    _check_blob(key_type, blob)
    comment = " ".join(words[2:])
    return f"{options}{key_type} {blob}" + (f" {comment}" if comment else "")


def parse_key_file(text: str) -> list[str]:
    """All keys of an authorized_keys-style text (blank lines and # comments ignored)."""
    if looks_private(text):
        raise ValueError(PRIVATE)
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            keys.append(parse_public_key(stripped))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    if not keys:
        raise ValueError("no public key found")
    return keys
