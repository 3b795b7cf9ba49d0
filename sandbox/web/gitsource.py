"""A commit of the workspace's git repository, exported as a plain tree for a pipeline's build.

The workspace is a git checkout (or a directory inside one). `export_commit` checks that the sha
names a commit (fetching it from the remote when it is missing), then streams `git archive` of
the workspace's directory at that commit into a private directory, entry by entry:

- only regular files, directories and symlinks; no absolute names, no `..`, nothing written
  through a symlink, no symlink whose target leaves the tree; at most MAX_ENTRIES entries and
  MAX_BYTES bytes (the stream is cut and git killed past that);
- files get 0644 or 0755 (git keeps only the executable bit), directories 0755, root as owner.

git runs with argv only (no shell), without a terminal, with a timeout, and as the owner of the
checkout when that is not root: a fetch then uses that user's credentials and leaves no root-owned
files in their .git, and root never runs git on a repository it does not own (git's own
`safe.directory` check stays on; when it refuses, the error says so).
"""

from __future__ import annotations

import os
import posixpath
import pwd
import subprocess
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sandbox.errors import SandboxError

MAX_ENTRIES = 100_000
MAX_BYTES = 2 * 1024**3
FETCH_TIMEOUT = 300.0
GIT_TIMEOUT = 60.0
ARCHIVE_TIMEOUT = 600.0


class GitError(SandboxError):
    """The workspace's git repository cannot give the commit a pipeline builds."""


@dataclass(frozen=True)
class GitUser:
    """Who git runs as: the checkout's owner (root keeps root)."""

    uid: int
    gid: int
    name: str
    home: str

    @classmethod
    def owner_of(cls, path: Path) -> GitUser:
        st = os.stat(path)
        try:
            pw = pwd.getpwuid(st.st_uid)
            return cls(st.st_uid, st.st_gid, pw.pw_name, pw.pw_dir)
        except KeyError:
            return cls(st.st_uid, st.st_gid, str(st.st_uid), "/nonexistent")

    def popen_args(self) -> dict[str, Any]:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": self.home,
            "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "SSH_ASKPASS": "/bin/false",
        }
        args: dict[str, Any] = {"env": env, "stdin": subprocess.DEVNULL, "start_new_session": True}
        if os.geteuid() == 0 and self.uid != 0:
            try:
                groups = os.getgrouplist(self.name, self.gid)
            except (KeyError, OSError):
                groups = []
            args.update(user=self.uid, group=self.gid, extra_groups=groups)
        return args


class Git:
    """git on the repository holding `root`, as its owner."""

    def __init__(self, root: Path, remote: str = "origin") -> None:
        self.root = root
        self.remote = remote
        self.user = GitUser.owner_of(root)
        self.top = root

    def run(self, *argv: str, timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                ["git", "-C", str(self.root), *argv],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                **self.user.popen_args(),
            )
        except subprocess.TimeoutExpired as e:
            raise GitError(
                f"git {argv[0]} took longer than {timeout:.0f} s", hint="is the remote reachable?"
            ) from e
        except OSError as e:
            raise GitError(f"cannot run git: {e.strerror}", hint="install git") from e

    def _fail(self, what: str, p: subprocess.CompletedProcess[str]) -> GitError:
        err = (p.stderr or p.stdout).strip()
        last = err.splitlines()[-1] if err else f"exit status {p.returncode}"
        if "dubious ownership" in err:
            return GitError(
                f"{what}: git refuses the repository at {self.root} (dubious ownership)",
                hint=f"the checkout's files belong to several users; git runs as {self.user.name}, the "
                "owner of the workspace directory: make one user own the whole checkout",
            )
        if "not a git repository" in err:
            return GitError(
                f"{what}: the workspace {self.root} is not a git checkout",
                hint="a pipeline with a commit builds from the workspace's git history: make the "
                "workspace a clone of the repository the webhook comes from, or give no commit",
            )
        return GitError(f"{what}: {last[:300]}")

    def prefix(self) -> str:
        """The workspace's directory inside the repository ('' at its top)."""
        p = self.run("rev-parse", "--show-toplevel", "--show-prefix")
        if p.returncode != 0:
            raise self._fail("cannot read the workspace's git repository", p)
        top, _, prefix = p.stdout.partition("\n")
        self.top = Path(top.strip())  # `git archive TREE` runs there: in a subdirectory it would add its path
        prefix = prefix.strip()
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise GitError(f"unexpected repository prefix {prefix[:100]!r}")
        return prefix.rstrip("/")

    def object_type(self, sha: str) -> str | None:
        p = self.run("cat-file", "-t", sha)
        return p.stdout.strip() if p.returncode == 0 else None

    def fetch(self, sha: str) -> None:
        """Fetch `sha` from the remote: by its id, else the remote's branches (a server may refuse
        a fetch by id of a commit no ref names... or any fetch by id)."""
        first = self.run("fetch", "--no-tags", "--no-recurse-submodules", "--quiet", self.remote, sha,
                         timeout=FETCH_TIMEOUT)  # fmt: skip
        if first.returncode == 0 and self.object_type(sha) == "commit":
            return
        second = self.run("fetch", "--no-tags", "--no-recurse-submodules", "--quiet", self.remote,
                          timeout=FETCH_TIMEOUT)  # fmt: skip
        if second.returncode != 0:
            err = self._fail(f"cannot fetch commit {sha[:12]} from the remote {self.remote!r}", second)
            err.hint = err.hint or (
                f"check the remote's URL and that {self.user.name} can fetch it without a prompt "
                "(its ssh key or credential helper)"
            )
            raise err

    def archive(self, sha: str, prefix: str, dest: Path) -> dict[str, int]:
        """Write the tree of `sha` (its directory `prefix`) into `dest` (empty); counts."""
        treeish = f"{sha}:{prefix}" if prefix else sha
        proc = subprocess.Popen(
            ["git", "-C", str(self.top), "archive", "--format=tar", treeish],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **self.user.popen_args(),
        )
        assert proc.stdout is not None and proc.stderr is not None
        watchdog = threading.Timer(ARCHIVE_TIMEOUT, proc.kill)  # a stream that stalls ends
        watchdog.start()
        try:
            try:
                counts = extract(proc.stdout, dest)
            except tarfile.TarError as e:  # git wrote no tar: its own error says why
                _, err = proc.communicate(timeout=GIT_TIMEOUT)
                text = err.decode(errors="replace").strip() or str(e)
                raise GitError(f"git archive of {sha[:12]} failed: {text.splitlines()[-1][:300]}") from e
            # tar pads its end to a whole record: read it, so that git does not die of SIGPIPE
            if len(proc.stdout.read(1 << 20)) >= 1 << 20:
                raise GitError(f"git archive of {sha[:12]} wrote more than its tar stream")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            watchdog.cancel()
            proc.stdout.close()
        try:
            _, err = proc.communicate(timeout=ARCHIVE_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            proc.kill()
            proc.wait()
            raise GitError(f"git archive of {sha[:12]} did not end") from e
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip()
            raise GitError(f"git archive of {sha[:12]} failed: {text.splitlines()[-1][:300] if text else ''}")
        return counts


def export_commit(root: Path, sha: str, dest: Path, remote: str = "origin") -> dict[str, Any]:
    """The tree of commit `sha` (the workspace's directory of it) in `dest`, fetched if missing."""
    git = Git(root, remote)
    prefix = git.prefix()
    kind = git.object_type(sha)
    fetched = False
    if kind is None:
        git.fetch(sha)
        fetched = True
        kind = git.object_type(sha)
    if kind != "commit":
        raise GitError(
            f"{sha[:12]} is {'not in the repository' if kind is None else f'a {kind}, not a commit'}",
            hint="a pipeline builds a commit of the workspace's repository",
        )
    counts = git.archive(sha, prefix, dest)
    return {"commit": sha, "fetched": fetched, "prefix": prefix, **counts}


def _unsafe(name: str, why: str) -> GitError:
    return GitError(
        f"the commit's tree holds an unsafe entry {name[:120]!r}: {why}", hint="nothing was built from it"
    )


def extract(stream: IO[bytes], dest: Path) -> dict[str, int]:
    """Extract a tar stream into the empty directory `dest`, refusing anything unsafe (above)."""
    top = os.path.realpath(dest)
    entries = total = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for m in tar:
            entries += 1
            if entries > MAX_ENTRIES:
                raise _unsafe(m.name, f"more than {MAX_ENTRIES} entries")
            name = m.name.removeprefix("./").rstrip("/")
            if not name or name == ".":
                continue
            if name.startswith("/") or ".." in name.split("/") or "\0" in name:
                raise _unsafe(m.name, "an absolute name or one with '..'")
            path = os.path.join(top, name)
            parent = os.path.dirname(path)
            if os.path.realpath(parent) != parent or not os.path.isdir(parent):
                raise _unsafe(m.name, "its directory is a symlink or missing")
            if os.path.lexists(path) and not (m.isdir() and os.path.isdir(path)):
                raise _unsafe(m.name, "it appears twice")
            if m.isdir():
                os.makedirs(path, mode=0o755, exist_ok=True)
            elif m.issym():
                target = m.linkname
                inside = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                if not target or target.startswith("/") or inside == ".." or inside.startswith("../"):
                    raise _unsafe(m.name, f"a symlink to {target[:120]!r}, outside the tree")
                os.symlink(target, path)
            elif m.isreg():
                total += m.size
                if total > MAX_BYTES:
                    raise _unsafe(m.name, f"the tree is over {MAX_BYTES} bytes")
                src = tar.extractfile(m)
                assert src is not None
                mode = 0o755 if m.mode & 0o111 else 0o644
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
                with os.fdopen(fd, "wb") as f:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
                os.chmod(path, mode)
            else:
                raise _unsafe(m.name, "not a file, directory or symlink")
    # a symlink may point through another one out of the tree: none may resolve outside it
    for dirpath, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                real = os.path.realpath(p)
                if real != top and not real.startswith(top + os.sep):
                    raise _unsafe(os.path.relpath(p, top), "a symlink that resolves outside the tree")
    return {"entries": entries, "bytes": total}
