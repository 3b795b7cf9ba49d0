"""`sandbox logs` on a terminal (sandbox/cli/safeterm.py): an instance's escape sequences are shown,
not obeyed, wherever the stream is cut; text, UTF-8, newlines and tabs pass as they are."""

from __future__ import annotations

import io
import sys

from hypothesis import given
from hypothesis import strategies as st

from sandbox.cli.safeterm import Filter, json_lines, show, visible


def test_controls_are_shown_and_text_is_kept() -> None:
    assert visible(b"ok\tdone\r\n") == b"ok\tdone\n"
    assert visible(b"\x1b]0;pwned\x07title") == b"\\x1b]0;pwned\\x07title"
    assert visible(b"over\rwrite") == b"over\\x0dwrite"
    assert visible("\u009b2J caf\u00e9 \u2603".encode()) == "\\x9b2J caf\u00e9 \u2603".encode()
    assert visible(b"\x7f\x00") == b"\\x7f\\x00"


@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=6))
def test_any_cut_gives_what_the_whole_gives(data: bytes, cuts: list[int]) -> None:
    f, out, last = Filter(), b"", 0
    for c in sorted(c for c in cuts if c <= len(data)):
        out += f.feed(data[last:c])
        last = c
    out += f.feed(data[last:]) + f.end()
    assert out == visible(data)
    assert b"\x1b" not in out and b"\xc2\x9b" not in out


def test_show_filters_a_command_and_returns_its_exit() -> None:
    out = io.BytesIO()
    code = show([sys.executable, "-c", "import sys; sys.stdout.write('a\\x1b[2Jb\\n'); sys.exit(3)"], out)
    assert code == 3 and out.getvalue() == b"a\\x1b[2Jb\n"


def test_json_lines_are_one_object_per_line_with_controls_escaped() -> None:
    import json

    out = io.BytesIO()
    script = "import sys; w=sys.stdout.buffer.write; w(b'a\\x1b[2Jb\\n\\xff\\n'+b'x'*70000); sys.exit(3)"
    code = json_lines([sys.executable, "-c", script], {"env": "e", "instance": 1}, out)
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 3
    assert docs[0] == {"env": "e", "instance": 1, "line": "a\x1b[2Jb"}
    assert b"\x1b" not in out.getvalue()  # escaped as \u001b in the JSON text
    assert docs[1]["line"] == "\ufffd"
    assert [len(d["line"]) for d in docs[2:]] == [65536, 70000 - 65536]
