"""The app layer: users, files and templates, keys, sudoers, cron, the app, run, services.

Applied on top of the base layer (in an overlayfs mount, so that the upper
directory is exactly the layer). Every failure names the recipe key it came from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from sandbox.build.rootfs import IN_ROOT, home_of, read_ids, run_in_root
from sandbox.config import LoadedRecipe
from sandbox.config.recipe import CronJob, Recipe
from sandbox.errors import BuildError
from sandbox.events import Event, EventSink
from sandbox.saferoot import (
    UnsafePath,
    exists_in_root,
    is_dir_in_root,
    lstat_in_root,
    mkdirs_in_root,
    remove_in_root,
    set_owner_in_root,
    symlink_in_root,
    write_in_root,
)

APP_UNIT = "sandbox-app.service"
APP_SCRIPT = "/usr/local/bin/sandbox-app"


def apply_app_layer(root: Path, loaded: LoadedRecipe, sde: int, sink: EventSink) -> None:
    env = {"SOURCE_DATE_EPOCH": str(sde)}
    steps: list[tuple[str, Callable[[], None]]] = [
        ("users", lambda: _users(root, loaded, env)),
        ("files", lambda: _files(root, loaded)),
        ("keys", lambda: _keys(root, loaded)),
        ("sudoers", lambda: _sudoers(root, loaded, env)),
        ("cron", lambda: _cron(root, loaded)),
        ("app", lambda: _app(root, loaded)),
        ("run", lambda: _run(root, loaded, env, sink)),
        ("services", lambda: _services(root, loaded, env)),
    ]
    for i, (name, step) in enumerate(steps, 1):
        sink(Event("progress", phase="app", message=name, current=i, total=len(steps)))
        step()


def _fail(
    loaded: LoadedRecipe, loc: tuple[str | int, ...], message: str, hint: str | None = None
) -> BuildError:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return BuildError(f"{loaded.where(loc)}: {path}: {message}", hint)


def _check(
    loaded: LoadedRecipe,
    loc: tuple[str | int, ...],
    root: Path,
    argv: list[str],
    env: dict[str, str],
    what: str,
    *,
    network: bool = False,
) -> None:
    p = run_in_root(root, argv, env, network=network)
    if p.returncode != 0:
        out = "\n".join((p.stdout + p.stderr).strip().splitlines()[-10:])
        raise _fail(loaded, loc, f"{what} failed (exit {p.returncode}):\n{out}")


def _users(root: Path, loaded: LoadedRecipe, env: dict[str, str]) -> None:
    groups = read_ids(root, "group")
    for i, u in enumerate(loaded.recipe.users):
        for g in u.groups:
            if g not in groups:
                _check(
                    loaded, ("users", i, "groups"), root, ["groupadd", "--", g], env, f"creating group {g}"
                )
                groups[g] = (0, 0)
        argv = ["useradd", "--create-home", "--user-group", "--shell", u.shell]
        if u.uid is not None:
            argv += ["--uid", str(u.uid)]
        if u.home:
            argv += ["--home-dir", u.home]
        if u.groups:
            argv += ["--groups", ",".join(u.groups)]
        _check(loaded, ("users", i), root, [*argv, "--", u.name], env, f"creating user {u.name}")


def _owner(
    root: Path, loaded: LoadedRecipe, loc: tuple[str | int, ...], owner: str, group: str | None
) -> tuple[int, int]:
    users, groups = read_ids(root, "passwd"), read_ids(root, "group")
    if owner not in users:
        raise _fail(
            loaded,
            loc,
            f"owner {owner!r} is not a user of the image",
            hint="declare it under users: or use a user a package creates",
        )
    uid, gid = users[owner]
    if group is not None:
        if group not in groups:
            raise _fail(loaded, loc, f"group {group!r} is not a group of the image")
        gid = groups[group][0]
    return uid, gid


@contextlib.contextmanager
def _guard(loaded: LoadedRecipe, loc: tuple[str | int, ...]) -> Iterator[None]:
    """A path the image refuses (saferoot) as a build error at the recipe key it came from."""
    try:
        yield
    except UnsafePath as e:
        raise _fail(loaded, loc, e.message, e.hint) from e


def _parent(dest: str) -> str:
    return dest.rstrip("/").rpartition("/")[0]


def _put(root: Path, dest: str, data: bytes | None, src: Path | None, mode: int, uid: int, gid: int) -> None:
    """Write image path `dest` (links followed inside the image only; a link, FIFO or device at
    `dest` itself is replaced); missing parents are made root:root 0755."""
    if src is not None:
        with open(src, "rb") as f:
            write_in_root(root, dest, f, mode, uid, gid, links=IN_ROOT, parents=(0o755, 0, 0))
    else:
        write_in_root(root, dest, data or b"", mode, uid, gid, links=IN_ROOT, parents=(0o755, 0, 0))


def _check_name(loaded: LoadedRecipe, loc: tuple[str | int, ...], name: str, where: Path) -> None:
    if name.startswith(".wh."):
        raise _fail(
            loaded,
            loc,
            f"{where}: a name starting with .wh. would be read as an overlay whiteout in the image",
            hint="rename the file",
        )


def _files(root: Path, loaded: LoadedRecipe) -> None:
    for rf in loaded.resolved_files:
        loc: tuple[str | int, ...] = ("files", rf.index, "dest")
        uid, gid = _owner(root, loaded, ("files", rf.index, "owner"), rf.owner, rf.group)
        dest = rf.dest
        with _guard(loaded, loc):
            if rf.src is not None and rf.is_dir:
                os.close(mkdirs_in_root(root, _parent(dest), 0o755, 0, 0, links=IN_ROOT))
                _copy_tree(root, loaded, loc, rf.src, dest.rstrip("/") or "/", rf.mode, uid, gid)
                continue
            if dest.endswith("/"):
                if rf.src is None:
                    raise _fail(loaded, loc, "a template needs a file name as dest, not a directory")
                _check_name(loaded, loc, rf.src.name, rf.src)
                dest = dest + rf.src.name
            mode = (
                rf.mode
                if rf.mode is not None
                else (0o755 if rf.src is not None and os.access(rf.src, os.X_OK) else 0o644)
            )
            _put(root, dest, rf.content, rf.src, mode, uid, gid)


def _copy_tree(
    root: Path,
    loaded: LoadedRecipe,
    loc: tuple[str | int, ...],
    src: Path,
    dest: str,
    mode: int | None,
    uid: int,
    gid: int,
) -> None:
    if not is_dir_in_root(root, dest, links=IN_ROOT):
        remove_in_root(root, dest, links=IN_ROOT)  # a file or link there: replaced
        # only directories sandbox creates change owner, never /etc or /srv
        os.close(mkdirs_in_root(root, dest, 0o755, uid, gid, links=IN_ROOT))
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        _check_name(loaded, loc, entry.name, Path(entry.path))
        image_path = f"{dest.rstrip('/')}/{entry.name}"
        if entry.is_symlink():
            symlink_in_root(root, image_path, os.readlink(entry.path), uid, gid, links=IN_ROOT)
        elif entry.is_dir():
            _copy_tree(root, loaded, loc, Path(entry.path), image_path, mode, uid, gid)
        elif entry.is_file():
            fmode = mode if mode is not None else (0o755 if os.access(entry.path, os.X_OK) else 0o644)
            _put(root, image_path, None, Path(entry.path), fmode, uid, gid)


def _keys(root: Path, loaded: LoadedRecipe) -> None:
    """authorized_keys of each user. The home is found inside the image (links followed there), but
    `.ssh` and `authorized_keys` themselves must not be links: a `files:` entry could have planted
    one, and keys (and their owner) must land in that user's own directory, nowhere else."""
    users = read_ids(root, "passwd")
    for user, lines in loaded.keys.items():
        if not lines:
            continue
        uid, gid = users[user]
        home = home_of(root, user) or f"/home/{user}"
        ssh = home.rstrip("/") + "/.ssh"
        loc: tuple[str | int, ...] = ("keys", user)
        with _guard(loaded, loc):
            st = lstat_in_root(root, ssh, links=IN_ROOT)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise _fail(
                    loaded,
                    loc,
                    f"{ssh} in the image is not a directory (a link or a file, made by files: or a package)",
                    hint="do not ship .ssh in files:; sandbox writes authorized_keys from keys:",
                )
            os.close(mkdirs_in_root(root, home, 0o755, 0, 0, links=IN_ROOT))
            os.close(mkdirs_in_root(root, ssh, 0o700, uid, gid, links=IN_ROOT))
            set_owner_in_root(root, ssh, 0o700, uid, gid, links=IN_ROOT)
            keys = ("\n".join(lines) + "\n").encode()
            write_in_root(root, ssh + "/authorized_keys", keys, 0o600, uid, gid, links=IN_ROOT)


def _sudo_escape(cmd: str) -> str:
    return "".join("\\" + c if c in ",:=\\" else c for c in cmd)


def _sudoers(root: Path, loaded: LoadedRecipe, env: dict[str, str]) -> None:
    for i, u in enumerate(loaded.recipe.users):
        if not u.sudo:
            continue
        rel = f"/etc/sudoers.d/sandbox-{u.name}"
        text = (
            f"# from recipe {loaded.recipe.name}: {u.name} may run exactly these commands as root\n"
            f"{u.name} ALL=(root) NOPASSWD: " + ", ".join(_sudo_escape(c) for c in u.sudo) + "\n"
        )
        with _guard(loaded, ("users", i, "sudo")):
            _put(root, rel, text.encode(), None, 0o440, 0, 0)
        _check(loaded, ("users", i, "sudo"), root, ["visudo", "-c", "-q", "-f", rel], env, "checking sudoers")


def cron_line(job: CronJob) -> str:
    """The /etc/cron.d file for one job (pure; tested against fixtures)."""
    lines = [f"# sandbox cron job {job.name}"]
    for key, value in (("MAILTO", job.mailto), ("PATH", job.path), ("SHELL", job.shell), ("HOME", job.home)):
        if value is not None:
            lines.append(f"{key}={value}")
    lines += [f"{k}={v}" for k, v in sorted(job.environment.items())]
    when = f"@{job.time}" if job.time else f"{job.minute} {job.hour} {job.day} {job.month} {job.weekday}"
    lines.append(f"{when} {job.user} {job.command}")
    return "\n".join(lines) + "\n"


def _cron(root: Path, loaded: LoadedRecipe) -> None:
    users = read_ids(root, "passwd")
    for i, job in enumerate(loaded.recipe.cron):
        if job.user not in users:
            raise _fail(loaded, ("cron", i, "user"), f"user {job.user!r} is not a user of the image")
        with _guard(loaded, ("cron", i, "name")):
            _put(root, f"/etc/cron.d/{job.name}", cron_line(job).encode(), None, 0o644, 0, 0)


def _systemd_present(root: Path) -> bool:
    return any(exists_in_root(root, p) for p in ("lib/systemd/systemd", "usr/lib/systemd/systemd"))


def app_files(recipe: Recipe, with_systemd: bool) -> dict[str, tuple[bytes, int]]:
    """Image path → (content, mode) for the app's script, metadata and unit (pure)."""
    app = recipe.app
    assert app is not None
    cd = f"cd {shlex.quote(app.workdir)}\n" if app.workdir else ""
    script = f"#!/bin/sh\n# the app of recipe {recipe.name}, generated by sandbox\n{cd}exec {app.command}\n"
    env = "".join(f'{k}="{_systemd_quote(v)}"\n' for k, v in sorted(recipe.env.items()))
    meta = {
        "recipe": recipe.name,
        "app": app.model_dump(mode="json"),
        "env": recipe.env,
        "script": APP_SCRIPT,
        "unit": APP_UNIT if with_systemd else None,
    }
    out = {
        APP_SCRIPT: (script.encode(), 0o755),
        "/etc/sandbox/app.env": (env.encode(), 0o644),
        "/etc/sandbox/app.json": ((json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(), 0o644),
    }
    if with_systemd:
        sudo = any(u.sudo for u in recipe.users if u.name == app.user)
        unit = (
            f"[Unit]\nDescription=app of sandbox recipe {recipe.name}\nAfter=network.target\n\n"
            f"[Service]\nUser={app.user}\nGroup={app.user}\n"
            "EnvironmentFile=-/etc/sandbox/app.env\nEnvironmentFile=-/etc/sandbox/instance.env\n"
            f"ExecStart={APP_SCRIPT}\nExecReload=/bin/kill -HUP $MAINPID\n"
            "Restart=always\nRestartSec=1\nTimeoutStopSec=30\n"
            + ("" if sudo else "NoNewPrivileges=yes\n")
            + "\n[Install]\nWantedBy=multi-user.target\n"
        )
        out[f"/etc/systemd/system/{APP_UNIT}"] = (unit.encode(), 0o644)
    return out


def _systemd_quote(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _app(root: Path, loaded: LoadedRecipe) -> None:
    recipe = loaded.recipe
    if recipe.app is None:
        return
    for dest, (data, mode) in app_files(recipe, _systemd_present(root)).items():
        with _guard(loaded, ("app",)):
            _put(root, dest, data, None, mode, 0, 0)


def _run(root: Path, loaded: LoadedRecipe, env: dict[str, str], sink: EventSink) -> None:
    full_env = {**loaded.recipe.env, **env}
    if (
        loaded.recipe.run
        and lstat_in_root(root, "etc/resolv.conf", links=IN_ROOT) is None
        and Path("/etc/resolv.conf").is_file()
    ):
        # DNS for build commands; normalization removes the file again
        with _guard(loaded, ("run",)):
            write_in_root(root, "etc/resolv.conf", Path("/etc/resolv.conf").read_bytes(), links=IN_ROOT)
    for i, cmd in enumerate(loaded.recipe.run):
        sink(Event("log", phase="app", message=f"run: {cmd}"))
        _check(
            loaded,
            ("run", i),
            root,
            ["/bin/sh", "-ec", cmd],
            full_env,
            "build command",
            network=loaded.recipe.run_network,
        )


def _services(root: Path, loaded: LoadedRecipe, env: dict[str, str]) -> None:
    r = loaded.recipe
    units = list(r.services)
    if r.app is not None and _systemd_present(root):
        units.append(APP_UNIT)
    for i, unit in enumerate(units):
        loc: tuple[str | int, ...] = ("services", i) if i < len(r.services) else ("app",)
        _check(loaded, loc, root, ["systemctl", "enable", "--", unit], env, f"enabling {unit}")
