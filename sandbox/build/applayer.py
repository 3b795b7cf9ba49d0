"""The app layer: users, files and templates, keys, sudoers, cron, the app, run, services.

Applied on top of the base layer (in an overlayfs mount, so that the upper
directory is exactly the layer). Every failure names the recipe key it came from.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from sandbox.build.rootfs import RootEscape, home_of, read_ids, resolve_in_root, run_in_root
from sandbox.config import LoadedRecipe
from sandbox.config.recipe import CronJob, Recipe
from sandbox.errors import BuildError
from sandbox.events import Event, EventSink

APP_UNIT = "sandbox-app.service"
APP_SCRIPT = "/usr/local/bin/sandbox-app"


def apply_app_layer(root: Path, loaded: LoadedRecipe, sde: int, sink: EventSink) -> None:
    r = loaded.recipe
    env = {"SOURCE_DATE_EPOCH": str(sde)}
    steps: list[tuple[str, Callable[[], None]]] = [
        ("users", lambda: _users(root, loaded, env)),
        ("files", lambda: _files(root, loaded)),
        ("keys", lambda: _keys(root, loaded)),
        ("sudoers", lambda: _sudoers(root, loaded, env)),
        ("cron", lambda: _cron(root, loaded)),
        ("app", lambda: _app(root, r)),
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


def _target(root: Path, loaded: LoadedRecipe, loc: tuple[str | int, ...], dest: str) -> Path:
    try:
        return resolve_in_root(root, dest)
    except RootEscape as e:
        raise _fail(loaded, loc, e.message) from e


def _mkparents(root: Path, path: Path) -> None:
    missing = []
    p = path.parent
    while not p.exists() and p != root:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o755)
        os.chown(d, 0, 0)


def _put(path: Path, data: bytes | None, src: Path | None, mode: int, uid: int, gid: int) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    if src is not None:
        shutil.copyfile(src, path, follow_symlinks=False)
    else:
        path.write_bytes(data or b"")
    os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, mode)


def _files(root: Path, loaded: LoadedRecipe) -> None:
    for rf in loaded.resolved_files:
        loc: tuple[str | int, ...] = ("files", rf.index, "dest")
        uid, gid = _owner(root, loaded, ("files", rf.index, "owner"), rf.owner, rf.group)
        dest = rf.dest
        if rf.src is not None and rf.is_dir:
            top = _target(root, loaded, loc, dest)
            _mkparents(root, top / "x")
            _copy_tree(root, loaded, loc, rf.src, dest.rstrip("/") or "/", rf.mode, uid, gid)
            continue
        if dest.endswith("/"):
            if rf.src is None:
                raise _fail(loaded, loc, "a template needs a file name as dest, not a directory")
            dest = dest + rf.src.name
        path = _target(root, loaded, loc, dest)
        _mkparents(root, path)
        mode = (
            rf.mode
            if rf.mode is not None
            else (0o755 if rf.src is not None and os.access(rf.src, os.X_OK) else 0o644)
        )
        _put(path, rf.content, rf.src, mode, uid, gid)


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
    top = _target(root, loaded, loc, dest)
    if not top.is_dir():
        if top.exists() or top.is_symlink():
            top.unlink()
        top.mkdir(mode=0o755)
        os.chown(top, uid, gid)  # only directories sandbox creates change owner, never /etc or /srv
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        image_path = f"{dest.rstrip('/')}/{entry.name}"
        if entry.is_symlink():
            target = _target(root, loaded, loc, image_path)
            if target.is_symlink() or target.exists():
                target.unlink()
            os.symlink(os.readlink(entry.path), target)
            os.chown(target, uid, gid, follow_symlinks=False)
        elif entry.is_dir():
            _copy_tree(root, loaded, loc, Path(entry.path), image_path, mode, uid, gid)
        elif entry.is_file():
            fmode = mode if mode is not None else (0o755 if os.access(entry.path, os.X_OK) else 0o644)
            _put(_target(root, loaded, loc, image_path), None, Path(entry.path), fmode, uid, gid)


def _keys(root: Path, loaded: LoadedRecipe) -> None:
    users = read_ids(root, "passwd")
    for user, lines in loaded.keys.items():
        if not lines:
            continue
        uid, gid = users[user]
        home = home_of(root, user) or f"/home/{user}"
        ssh = _target(root, loaded, ("keys", user), home.rstrip("/") + "/.ssh")
        _mkparents(root, ssh)
        ssh.mkdir(mode=0o700, exist_ok=True)
        os.chown(ssh, uid, gid)
        os.chmod(ssh, 0o700)
        _put(ssh / "authorized_keys", ("\n".join(lines) + "\n").encode(), None, 0o600, uid, gid)


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
        path = _target(root, loaded, ("users", i, "sudo"), rel)
        _mkparents(root, path)
        _put(path, text.encode(), None, 0o440, 0, 0)
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
        path = _target(root, loaded, ("cron", i, "name"), f"/etc/cron.d/{job.name}")
        _mkparents(root, path)
        _put(path, cron_line(job).encode(), None, 0o644, 0, 0)


def _systemd_present(root: Path) -> bool:
    return any((root / p).exists() for p in ("lib/systemd/systemd", "usr/lib/systemd/systemd"))


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


def _app(root: Path, recipe: Recipe) -> None:
    if recipe.app is None:
        return
    for dest, (data, mode) in app_files(recipe, _systemd_present(root)).items():
        path = resolve_in_root(root, dest)
        _mkparents(root, path)
        _put(path, data, None, mode, 0, 0)


def _run(root: Path, loaded: LoadedRecipe, env: dict[str, str], sink: EventSink) -> None:
    full_env = {**loaded.recipe.env, **env}
    resolv = root / "etc/resolv.conf"
    if (
        loaded.recipe.run
        and not resolv.exists()
        and not resolv.is_symlink()
        and Path("/etc/resolv.conf").is_file()
    ):
        # DNS for build commands; normalization removes the file again
        resolv.write_bytes(Path("/etc/resolv.conf").read_bytes())
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
