"""`sandbox init`: a new workspace from a template (sandbox/templates/NAME plus _common).

A template is a folder of files laid out as in a workspace; `__NAME__` in a path or a text is the
recipe's name. Writing is all or nothing: every file is planned first, and when one that exists
differs from the template's (or is not a regular file, or sits below a link), nothing is written.
Files that exist with the same content are skipped; `.gitignore` is the one file init may extend:
lines it lacks are appended, its own lines are never changed.

Init runs as root, in folders others may write: paths below DIR are resolved by the kernel with no
symbolic link followed (saferoot's "refuse"), new files are created with O_EXCL semantics (a temp
file linked to its name, which fails if anything appeared there meanwhile), never truncated.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError
from sandbox.saferoot import UnsafePath, mkdirs_in_root, open_in_root, read_in_root

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
COMMON = "_common"
DEFAULT_TEMPLATE = "flask"
PLACEHOLDER = "__NAME__"
RECIPE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # sandbox.config.names (a lower layer here)
RENAMES = {"gitignore": ".gitignore"}  # dotfiles are kept without their dot in the package
APPENDABLE = {".gitignore"}
READ_LIMIT = 1 << 20


class InitConflict(SandboxError):
    """Existing files differ from the template's: nothing was written."""

    def __init__(self, conflicts: list[dict[str, str]]) -> None:
        lines = "; ".join(f"{c['path']} ({c['reason']})" for c in conflicts)
        super().__init__(
            f"{len(conflicts)} file(s) of the template clash with what is there, nothing written: {lines}",
            hint="move or rename them and run init again (init never overwrites a file)",
        )
        self.conflicts = conflicts

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "conflicts": self.conflicts}


@dataclass
class Plan:
    root: Path
    template: str
    name: str
    write: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # rel -> (content, mode)
    append: dict[str, bytes] = field(default_factory=dict)  # rel -> lines to add
    skipped: list[str] = field(default_factory=list)
    conflicts: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workspace": str(self.root),
            "template": self.template,
            "recipe": self.name,
            "written": sorted(self.write),
            "appended": sorted(self.append),
            "skipped": sorted(self.skipped),
        }


def templates() -> list[str]:
    return sorted(p.name for p in TEMPLATES_DIR.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def check_template(template: str) -> str:
    known = templates()
    if template in known:
        return template
    close = difflib.get_close_matches(template, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    raise SandboxError(f"unknown template {template!r}", hint=f"{hint}templates: {', '.join(known)}")


def recipe_name(name: str | None, root: Path) -> str:
    """The given name (checked), else one made from the folder's name, else `app`."""
    if name is not None:
        if not RECIPE_NAME.fullmatch(name):
            raise SandboxError(
                f"invalid recipe name {name!r}",
                hint="use lower-case letters, digits and '-', starting with a letter or digit (max 63)",
            )
        return name
    made = re.sub(r"[^a-z0-9-]+", "-", root.name.lower()).strip("-")[:63].strip("-")
    return made if RECIPE_NAME.fullmatch(made) else "app"


def template_files(template: str, name: str) -> dict[str, tuple[bytes, int]]:
    """Workspace path -> (content, mode) of every file of the template (its own over _common)."""
    out: dict[str, tuple[bytes, int]] = {}
    for base in (TEMPLATES_DIR / COMMON, TEMPLATES_DIR / template):
        for p in sorted(base.rglob("*")):
            if not p.is_file() or "__pycache__" in p.parts or p.suffix == ".pyc":
                continue
            parts = [RENAMES.get(x, x).replace(PLACEHOLDER, name) for x in p.relative_to(base).parts]
            data = p.read_bytes().replace(PLACEHOLDER.encode(), name.encode())
            out["/".join(parts)] = (data, 0o755 if p.stat().st_mode & stat.S_IXUSR else 0o644)
    return out


def prepare_root(root: Path) -> Path:
    """DIR as an absolute path: made when missing; refused when it is a link or not a directory."""
    path = Path(os.path.abspath(root))
    try:
        st = path.lstat()
    except FileNotFoundError:
        path.mkdir(parents=True, mode=0o755)
        if os.geteuid() == 0:  # as root: the new folder is its parent's owner's (sudo in one's home)
            parent = path.parent.stat()
            os.chown(path, parent.st_uid, parent.st_gid, follow_symlinks=False)
        return path
    if stat.S_ISLNK(st.st_mode):
        raise SandboxError(
            f"{path} is a symbolic link; init writes only into a real folder",
            hint=f"give the folder it points to: sandbox init {path.resolve()}",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise SandboxError(f"{path} exists and is not a folder", hint="give a new or an existing folder")
    return path


def _existing(root: Path, rel: str) -> tuple[str, bytes | None]:
    """("missing" | "file" | a reason it cannot be used, content of a regular file)."""
    parent, _, name = rel.rpartition("/")
    try:
        dfd = open_in_root(root, parent, os.O_PATH | os.O_DIRECTORY, links="refuse")
    except FileNotFoundError:
        return "missing", None
    except UnsafePath:
        return "a folder on its path is a symbolic link", None
    except NotADirectoryError:
        return "a part of its path is a file, not a folder", None
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return "missing", None
    finally:
        os.close(dfd)
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link", None
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file", None
    if st.st_size > READ_LIMIT:
        return "it differs (larger than the template's)", None
    return "file", read_in_root(root, rel, READ_LIMIT, links="refuse")


def plan(root: Path, template: str, name: str) -> Plan:
    out = Plan(root, template, name)
    for rel, (data, mode) in template_files(template, name).items():
        what, current = _existing(root, rel)
        if what == "missing":
            out.write[rel] = (data, mode)
        elif what != "file" or current is None:
            out.conflicts.append({"path": rel, "reason": what})
        elif current == data:
            out.skipped.append(rel)
        elif rel in APPENDABLE:
            have = {ln.strip() for ln in current.decode(errors="replace").splitlines()}
            lack = [ln for ln in data.decode().splitlines() if ln.strip() not in have and ln.strip()]
            if any(not ln.startswith("#") for ln in lack):
                out.append[rel] = ("\n" if current and not current.endswith(b"\n") else "").encode() + (
                    "\n".join(lack) + "\n"
                ).encode()
            else:
                out.skipped.append(rel)
        else:
            out.conflicts.append({"path": rel, "reason": "it differs from the template's"})
    return out


def _create(root: Path, rel: str, data: bytes, mode: int, uid: int | None, gid: int | None) -> None:
    """A new file at `rel` (never replacing anything): temp file, then link(2) to the name."""
    parent, _, name = rel.rpartition("/")
    dfd = mkdirs_in_root(root, parent, 0o755, uid, gid, links="refuse")
    tmp = f".sbx-init-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd
        )
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if uid is not None and gid is not None:
                os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), mode)
        try:
            os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileExistsError:
            raise InitConflict([{"path": rel, "reason": "it appeared while init was writing"}]) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        os.close(dfd)


def _append(root: Path, rel: str, data: bytes) -> None:
    fd = open_in_root(root, rel, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK, links="refuse")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", rel)
        os.write(fd, data)
    finally:
        os.close(fd)


def init(root: Path, template: str = DEFAULT_TEMPLATE, name: str | None = None) -> Plan:
    """Make (or complete) the workspace at `root`; raises InitConflict and writes nothing on a conflict."""
    template = check_template(template)
    recipe = recipe_name(name, Path(os.path.abspath(root)))
    path = prepare_root(root)
    p = plan(path, template, recipe)
    if p.conflicts:
        raise InitConflict(p.conflicts)
    st = path.stat()  # as root, new files belong to the folder's owner (`sudo sandbox init` in one's home)
    uid, gid = (st.st_uid, st.st_gid) if os.geteuid() == 0 else (None, None)
    for rel, (data, mode) in sorted(p.write.items()):
        _create(path, rel, data, mode, uid, gid)
    for rel, data in p.append.items():
        _append(path, rel, data)
    return p
