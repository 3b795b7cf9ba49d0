"""`sandbox serve`: the deploy web frontend (docs/web.md). Root runs the state DB, the job worker and
an RPC socket; the HTTP side runs as the unprivileged `sandbox-web`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from sandbox.cli.main import Ctx, cli, json_option


@cli.command()
@click.option(
    "--listen",
    default="127.0.0.1:8700",
    show_default=True,
    metavar="ADDR:PORT",
    help="Address and port the HTTP side listens on.",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="PEM certificate.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="PEM private key.")
@click.option(
    "--behind-tls-proxy", is_flag=True, help="Allow a non-loopback address: a TLS proxy is in front."
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/run/sandbox-web"),
    show_default=True,
    help="Where the RPC socket is made.",
)
@click.option("--user", "web_user", default="sandbox-web", show_default=True, help="The HTTP side's user.")
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=2,
    show_default=True,
    help="Jobs of this many envs run at once (one env's jobs always one at a time).",
)
@json_option
@click.pass_obj
def serve(
    obj: Ctx,
    listen: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    behind_tls_proxy: bool,
    run_dir: Path,
    web_user: str,
    workers: int,
) -> None:
    """Serve the web frontend: pages, the JSON API (/api/v1) and webhooks (/hooks/NAME).

    With --json: one line {"url", "pid", "http_pid", "workers"} on stdout once it listens."""
    from sandbox.web.serve import ServeOptions
    from sandbox.web.serve import serve as run

    opts = ServeOptions(listen, tls_cert, tls_key, behind_tls_proxy, web_user, run_dir, workers)
    sys.exit(run(obj.ws, opts, on_ready=_ready_line if obj.output.as_json else None))


def _ready_line(info: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
