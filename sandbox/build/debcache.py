"""The package cache: .deb files by sha256, and a local apt repository made from them.

A locked build installs from a repository that holds exactly the locked
.debs (nothing else can be picked), so that with a full cache it needs no
network and cannot drift.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from sandbox.build.hostapt import PackageRecord, PrivateApt
from sandbox.build.lock import Lock
from sandbox.errors import BuildError
from sandbox.fsutil import atomic_write


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class PackageCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def deb(self, sha: str) -> Path:
        return self.root / f"{sha}.deb"

    def missing(self, lock: Lock) -> list[PackageRecord]:
        return [p for p in lock.packages if not self.deb(p.sha256).is_file()]

    def fetch(
        self, lock: Lock, apt_factory: Callable[[], PrivateApt], progress: Callable[[str], None] | None = None
    ) -> int:
        """Download every locked .deb not yet cached; verify each sha256. Returns the count."""
        todo = self.missing(lock)
        if not todo:
            return 0
        self.root.mkdir(parents=True, exist_ok=True)
        apt = apt_factory()
        if progress:
            progress("updating package indices")
        apt.update()
        if progress:
            progress(f"downloading {len(todo)} packages")
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".dl-") as tmp:
            apt.download([(p.name, p.version) for p in todo], Path(tmp))
            by_name = {}
            for f in Path(tmp).iterdir():
                by_name[f.name.split("_", 1)[0]] = f
            for p in todo:
                got = by_name.get(p.name)
                if got is None:
                    raise BuildError(f"apt did not download {p.name} {p.version}")
                digest = sha256_file(got)
                if digest != p.sha256:
                    raise BuildError(
                        f"{p.name} {p.version}: sha256 {digest[:12]}… differs from the lock's "
                        f"{p.sha256[:12]}…",
                        hint="the mirror serves another file for this version; re-lock with `sandbox lock`",
                    )
                os.replace(got, self.deb(p.sha256))
        return len(todo)

    def control(self, p: PackageRecord) -> str:
        """The package's control stanza (cached beside the .deb)."""
        cached = self.root / f"{p.sha256}.control"
        if cached.is_file():
            return cached.read_text()
        out = subprocess.run(
            ["dpkg-deb", "--field", "--", str(self.deb(p.sha256))],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise BuildError(
                f"{p.name}: cannot read the .deb's control data: {out.stderr.strip()}",
                hint=f"remove {self.deb(p.sha256)} and build again",
            )
        atomic_write(cached, out.stdout.encode())
        return out.stdout

    def make_repo(self, lock: Lock, repo: Path) -> str:
        """Lay out an apt repository in `repo` holding exactly the locked .debs.

        Returns the sources.list line for it. Pool entries are hard links (or
        copies across filesystems) into the cache.
        """
        missing = self.missing(lock)
        if missing:
            raise BuildError(
                f"{len(missing)} locked packages are not in the package cache",
                hint="build once with network access to fill it",
            )
        pool = repo / "pool"
        pool.mkdir(parents=True, exist_ok=True)
        stanzas = []
        for p in sorted(lock.packages, key=lambda p: p.name):
            src = self.deb(p.sha256)
            if sha256_file(src) != p.sha256:
                src.unlink()
                raise BuildError(
                    f"cached {p.name} {p.version} is corrupt (sha256 mismatch); it was removed",
                    hint="build again to download it",
                )
            dst = pool / p.filename
            try:
                os.link(src, dst)
            except OSError:
                dst.write_bytes(src.read_bytes())
            stanzas.append(
                self.control(p).rstrip("\n")
                + f"\nFilename: pool/{p.filename}\nSize: {p.size}\nSHA256: {p.sha256}\n"
            )
        packages = ("\n".join(stanzas)).encode()
        arch = lock.architecture
        pdir = repo / "dists" / lock.suite / "main" / f"binary-{arch}"
        pdir.mkdir(parents=True, exist_ok=True)
        (pdir / "Packages").write_bytes(packages)
        release = (
            f"Origin: sandbox\nLabel: sandbox\nSuite: {lock.suite}\nCodename: {lock.suite}\n"
            f"Architectures: {arch}\nComponents: main\nSHA256:\n"
            f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-{arch}/Packages\n"
        )
        (repo / "dists" / lock.suite / "Release").write_text(release)
        return f"deb [trusted=yes] file://{repo} {lock.suite} main"
