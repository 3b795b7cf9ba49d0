"""The optional backends: each daemon answers on its socket, and its Python SDK imports."""

from __future__ import annotations

import os

from sandbox.doctor.base import Check, Host, apt, ok, problem

DOCKER_SOCK = "/var/run/docker.sock"
LIBVIRT_SOCK = "/var/run/libvirt/libvirt-sock"
#: where pylxd.Client() looks: $LXD_DIR, the snap's, the Debian package's
LXD_SOCKS = ("/var/snap/lxd/common/lxd/unix.socket", "/var/lib/lxd/unix.socket")
#: backend → (SDK module, pip extra) as in pyproject's optional dependencies
SDKS = {"lxd": ("pylxd", "lxd"), "docker": ("docker", "docker"), "libvirt": ("libvirt", "libvirt")}
HTTP_GET = "GET {} HTTP/1.0\r\nHost: localhost\r\n\r\n"


def _daemon(
    host: Host,
    backend: str,
    sock: str,
    request: str | None,
    expect: str | None,
    fix: str,
    command: str,
    required: bool,
) -> Check:
    name = f"{backend} daemon"
    try:
        answer = host.ask(sock, request.encode() if request is not None else None)
    except FileNotFoundError:
        return problem(name, backend, f"no socket {sock}", fix, command, required=required)
    except PermissionError:
        return problem(name, backend, f"{sock}: permission denied", "run as root", required=required)
    except TimeoutError:
        return problem(name, backend, f"{sock}: no answer in time", fix, command, required=required)
    except OSError as e:
        return problem(name, backend, f"{sock}: {e.strerror or e}", fix, command, required=required)
    if expect is not None and expect not in answer:
        return problem(name, backend, f"{sock} answered {answer[:80]!r}", fix, command, required=required)
    return ok(name, backend, f"answers on {sock}")


def sdk(host: Host, backend: str, required: bool) -> Check:
    module, extra = SDKS[backend]
    name = f"{backend} sdk"
    try:
        version = host.importer(module)
    except Exception as e:  # a broken SDK raises anything on import
        return problem(
            name,
            backend,
            f"python module {module} does not import ({type(e).__name__}: {e})",
            f"install sandbox's {extra} extra in its venv",
            f"pip install -e '.[{extra}]'",
            required=required,
        )
    return ok(name, backend, f"{module} {version}")


def lxd(host: Host, required: bool) -> list[Check]:
    socks = (f"{os.environ['LXD_DIR']}/unix.socket",) if os.environ.get("LXD_DIR") else LXD_SOCKS
    sock = next((s for s in socks if host.path(s).exists()), socks[-1])
    return [
        _daemon(
            host,
            "lxd",
            sock,
            HTTP_GET.format("/1.0"),
            " 200 ",
            "install LXD and start it (`sandbox host prepare PROFILE` also initialises its storage)",
            apt("lxd") + " && lxd init --auto",
            required,
        ),
        sdk(host, "lxd", required),
    ]


def docker(host: Host, required: bool) -> list[Check]:
    return [
        _daemon(
            host,
            "docker",
            DOCKER_SOCK,
            HTTP_GET.format("/_ping"),
            " 200 ",
            "install the docker engine and start it",
            apt("docker.io") + " && systemctl start docker",
            required,
        ),
        sdk(host, "docker", required),
    ]


def libvirt(host: Host, required: bool) -> list[Check]:
    qemu = ("qemu-system-x86_64", "qemu-img")
    missing = [t for t in qemu if host.which(t) is None]
    return [
        _daemon(
            host,
            "libvirt",
            LIBVIRT_SOCK,
            None,
            None,
            "install libvirtd and start it",
            apt("libvirt-daemon-system") + " && systemctl start libvirtd",
            required,
        ),
        sdk(host, "libvirt", required),
        problem(
            "qemu",
            "libvirt",
            "missing " + ", ".join(missing),
            "install qemu",
            apt("qemu-system-x86", "qemu-utils"),
            required=required,
        )
        if missing
        else ok("qemu", "libvirt", ", ".join(qemu)),
    ]
