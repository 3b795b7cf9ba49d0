"""The HTTP side's process: `python -m sandbox.web.httpmain --socket PATH --fd N [--tls-dir DIR]`.

`sandbox serve` starts it with setgroups([]), setgid and setuid to the unprivileged `sandbox-web`
already done (subprocess's user/group/extra_groups, before exec), so nothing of the app is ever
imported as root; this module checks that first, and refuses to go on as root. It serves on the
listening socket root bound for it (inherited as fd N), and reaches the root side only through the
unix socket.

It must not outlive the root side: killed with SIGKILL, root cannot stop it, and it would keep the
port (a restarted `sandbox serve` could not bind it) and answer 502 for ever. So it asks the kernel
for SIGTERM when its parent dies (PR_SET_PDEATHSIG, after the uid change, which clears it) and then
checks that the parent it was given (--parent) is still its parent: a parent that died before the
prctl is seen there.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> bool:
    """SIGTERM to this process when its parent dies; False if the parent is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    return os.getppid() == parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sandbox-web")
    p.add_argument("--socket", required=True)
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--tls-dir")
    p.add_argument("--secure-cookies", action="store_true")
    p.add_argument("--parent", type=int, help="the root side's pid: end when it does")
    a = p.parse_args(argv)
    if os.getuid() == 0 or os.geteuid() == 0 or os.getgid() == 0 or os.getegid() == 0 or os.getgroups():
        print("sandbox-web: refusing to run as root or with supplementary groups", file=sys.stderr)
        return 2
    if a.parent is not None and not die_with_parent(a.parent):
        print("sandbox-web: the root side is gone", file=sys.stderr)
        return 3
    import uvicorn  # only now: nothing of the app was imported with privileges

    from sandbox.web.httpapp import WebConfig, make_app

    sock = socket.socket(fileno=a.fd)
    tls = {}
    if a.tls_dir:
        tls = {"ssl_certfile": f"{a.tls_dir}/cert.pem", "ssl_keyfile": f"{a.tls_dir}/key.pem"}
    config = uvicorn.Config(
        make_app(WebConfig(socket=a.socket, secure_cookies=a.secure_cookies)),
        proxy_headers=False,
        server_header=False,
        date_header=False,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=5,
        limit_concurrency=200,
        timeout_graceful_shutdown=2,  # an open /events stream would hold a stop for its whole life
        h11_max_incomplete_event_size=16 * 1024,
        **tls,  # type: ignore[arg-type]
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
