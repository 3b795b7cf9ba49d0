"""`sandbox serve`'s options: the listen address, and plain HTTP refused on anything but loopback
(before anything is made: no user, no socket, no state)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sandbox.cli.main import cli
from sandbox.errors import SandboxError
from sandbox.web.serve import check_exposure, parse_listen


@pytest.mark.parametrize(
    ("text", "want"),
    [("127.0.0.1:8700", ("127.0.0.1", 8700)), ("[::1]:80", ("::1", 80)), ("0.0.0.0:443", ("0.0.0.0", 443))],
)
def test_parse_listen(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize(
    "text", ["localhost:8700", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", ":80", "1.2.3.4:x"]
)
def test_a_malformed_listen_address(text: str) -> None:
    with pytest.raises(SandboxError, match="invalid listen address"):
        parse_listen(text)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "10.0.0.1"])
def test_plain_http_off_loopback_is_refused_unless_tls_or_a_proxy(host: str) -> None:
    with pytest.raises(SandboxError, match="not a loopback address"):
        check_exposure(host, tls=False, behind_proxy=False)
    check_exposure(host, tls=True, behind_proxy=False)
    check_exposure(host, tls=False, behind_proxy=True)
    check_exposure("127.0.0.1", tls=False, behind_proxy=False)
    check_exposure("::1", tls=False, behind_proxy=False)


def test_serve_on_0000_without_tls_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    (tmp_path / "sandbox.yaml").write_text("")
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(
        cli, ["-C", str(tmp_path), "serve", "--listen", "0.0.0.0:8700", "--run-dir", str(run_dir)]
    )
    assert r.exit_code == 1
    assert "refusing to serve plain HTTP on 0.0.0.0" in r.stderr and "--behind-tls-proxy" in r.stderr
    assert not run_dir.exists() and not (tmp_path / ".sandbox").exists()
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "serve", "--listen", "0.0.0.0:8700", "--tls-cert", "x"])
    assert r.exit_code == 1 and "go together" in r.stderr


def test_the_http_side_refuses_to_run_as_root() -> None:
    import os

    from sandbox.web.httpmain import main

    if os.geteuid() != 0:
        pytest.skip("needs root to see the refusal")
    assert main(["--socket", "/nonexistent", "--fd", "99"]) == 2
