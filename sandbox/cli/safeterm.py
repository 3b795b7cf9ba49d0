"""What an instance prints, made safe for the user's terminal: `sandbox logs` shows what a container
or a VM's serial console wrote, and a hostile instance can write terminal escape sequences (retitle
the window, move the cursor to overwrite earlier lines, on some terminals answer back into the
input). On a terminal every control character but newline and tab, and the C1 controls in UTF-8,
are shown as `\\xNN`; a pipe or a file gets the bytes as they are.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from typing import IO

_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")
#: a chunk may end in the middle of what needs its next byte to be judged
_PENDING = (b"\xc2", b"\r")


def visible(data: bytes) -> bytes:
    """`data` with its control characters shown as `\\xNN` (a CR before a LF is kept)."""
    data = data.replace(b"\r\n", b"\n")
    return _CONTROL.sub(lambda m: b"\\x%02x" % m.group()[-1], data)


class Filter:
    """`visible` over a stream cut into chunks anywhere."""

    def __init__(self) -> None:
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.held + chunk
        self.held = b""
        if data.endswith(_PENDING):
            data, self.held = data[:-1], data[-1:]
        return visible(data)

    def end(self) -> bytes:
        held, self.held = self.held, b""
        return visible(held)


def show(argv: Sequence[str], out: IO[bytes] | None = None) -> int:
    """Run argv with its output on this terminal, filtered when it is one; its exit code."""
    sink = out if out is not None else sys.stdout.buffer
    if out is None and not sys.stdout.isatty():
        return subprocess.call(list(argv))
    p = subprocess.Popen(list(argv), stdout=subprocess.PIPE)
    assert p.stdout is not None
    f = Filter()
    try:
        while chunk := os.read(p.stdout.fileno(), 65536):
            sink.write(f.feed(chunk))
            sink.flush()
        sink.write(f.end())
        sink.flush()
    finally:
        p.stdout.close()
    return p.wait()


MAX_LINE = 64 * 1024


def json_lines(argv: Sequence[str], fields: dict[str, object], out: IO[bytes] | None = None) -> int:
    """Run argv; each line it prints becomes one JSON object on stdout, `fields` plus "line" (text,
    undecodable bytes replaced; a line over 64 KiB is cut into pieces). Its exit code."""
    import json

    sink = out if out is not None else sys.stdout.buffer
    p = subprocess.Popen(list(argv), stdout=subprocess.PIPE)
    assert p.stdout is not None
    try:
        while raw := p.stdout.readline(MAX_LINE):
            line = raw.rstrip(b"\n").decode(errors="replace")
            sink.write(json.dumps({**fields, "line": line}).encode() + b"\n")
            sink.flush()
    finally:
        p.stdout.close()
    return p.wait()
