"""The root side's unix socket: one JSON line in, one out, per connection (rpcproto).

The socket lives in a root-owned directory of mode 0750 whose group is the HTTP user's group; the
socket itself is 0660 with that group. So only root and the HTTP side's user can connect, and a
connection still proves nothing: every call carries a session or token that RootSide checks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import threading
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.web.auth import AuthError
from sandbox.web.rootside import RootSide
from sandbox.web.rpcproto import MAX_LINE, RPCError, dumps, loads, read_line

READ_TIMEOUT = 30.0


def answer(root: RootSide, line: bytes) -> bytes:
    """The answer line to one request line; never raises (an unexpected error is a 500)."""
    try:
        req = loads(line)
        if not isinstance(req, dict) or set(req) != {"method", "cred", "source", "args"}:
            raise RPCError(400, "malformed request")
        result = root.handle(req["method"], req["cred"], req["source"], req["args"])
        return dumps({"ok": True, "result": result})
    except ValueError as e:
        return dumps({"ok": False, "status": 400, "error": {"error": "RPCError", "message": str(e)[:200]}})
    except RPCError as e:
        return dumps({"ok": False, "status": e.status, "error": e.to_dict()})
    except AuthError as e:
        return dumps({"ok": False, "status": 401, "error": e.to_dict()})
    except SandboxError as e:
        return dumps({"ok": False, "status": 400, "error": e.to_dict()})
    except Exception as e:  # a bug: the HTTP side shows 500; the detail stays here
        import traceback

        traceback.print_exc()
        return dumps(
            {"ok": False, "status": 500, "error": {"error": type(e).__name__, "message": "internal"}}
        )


class _Handler(socketserver.BaseRequestHandler):
    server: RPCServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(READ_TIMEOUT)
        try:
            line = read_line(sock, MAX_LINE)
        except (OSError, ValueError) as e:
            msg = {"ok": False, "status": 413 if "over" in str(e) else 400, "error": {"message": str(e)}}
            with contextlib.suppress(OSError):
                sock.sendall(dumps(msg))
            return
        with contextlib.suppress(OSError):
            sock.sendall(answer(self.server.root, line))


class RPCServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, root: RootSide) -> None:
        self.root = root
        super().__init__(str(path), _Handler)


def socket_dir(path: Path, gid: int) -> None:
    """`path` as a directory root owns, of group `gid`, mode 0750 (made or fixed; never a symlink)."""
    path.mkdir(mode=0o750, parents=True, exist_ok=True)
    st = os.lstat(path)
    import stat

    if not stat.S_ISDIR(st.st_mode):
        raise SandboxError(f"{path} is not a directory", hint="remove it")
    os.chown(path, 0 if os.geteuid() == 0 else -1, gid)
    os.chmod(path, 0o750)


def start(path: Path, root: RootSide, gid: int | None = None) -> tuple[RPCServer, threading.Thread]:
    """Serve `root` on the unix socket `path` (replacing a stale one) in a thread; group `gid`, 0660."""
    if path.is_socket() or path.is_symlink():
        path.unlink()
    old = os.umask(0o117)
    try:
        server = RPCServer(path, root)
    finally:
        os.umask(old)
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, 0o660)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="rpc", daemon=True)
    thread.start()
    return server, thread


def stop(server: RPCServer, path: Path | None = None) -> None:
    server.shutdown()
    server.server_close()
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
