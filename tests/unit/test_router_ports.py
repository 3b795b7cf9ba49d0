"""The profile's ports: forwarded by the env's nginx (stream module) to every routed instance."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox.routing.render import STREAM_MODULE, PortForward, RouterConfig, render_nginx_conf

CFG = RouterConfig(
    "staging-1",
    "127.0.0.1",
    18000,
    "_",
    ("10.213.0.2:8000", "10.213.0.3:8000"),
    ports=(
        PortForward("127.0.0.1", 2222, "tcp", ("10.213.0.2:22", "10.213.0.3:22")),
        PortForward("0.0.0.0", 5353, "udp", ("10.213.0.2:53",)),
    ),
)


def test_ports_render_a_stream_block_with_every_backend(tmp_path: Path) -> None:
    text = render_nginx_conf(CFG, tmp_path)
    assert text.splitlines()[1] == f"load_module {STREAM_MODULE};"
    stream = text.split("stream {", 1)[1]
    assert "listen 127.0.0.1:2222;" in stream and "proxy_pass port_staging_1_tcp_2222;" in stream
    assert "server 10.213.0.2:22;" in stream and "server 10.213.0.3:22;" in stream
    assert "listen 0.0.0.0:5353 udp;" in stream and "server 10.213.0.2:53;" in stream


def test_no_ports_no_stream_module(tmp_path: Path) -> None:
    text = render_nginx_conf(RouterConfig("staging-1", "127.0.0.1", 18000, "_", ()), tmp_path)
    assert STREAM_MODULE not in text and "stream {" not in text


@pytest.mark.skipif(
    shutil.which("nginx") is None or not Path(STREAM_MODULE).exists(),
    reason="nginx with the stream module is installed by ./install.sh",
)
def test_nginx_accepts_the_ports_config(tmp_path: Path) -> None:
    for d in ("logs", "control", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(CFG, tmp_path, user="root", group="root"))
    p = subprocess.run(
        ["nginx", "-t", "-q", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
