"""`sandbox build` and `sandbox lock`: the build pipeline and its layer cache.

    recipe ─load─▶ lock ─fetch─▶ base layer (mmdebstrap) ─▶ app layer (overlayfs) ─▶ manifest

The base layer is keyed by the lock; the app layer by the base and every app
input (recipe, file contents, rendered templates, keys). An unchanged recipe
is a no-op; a changed template rebuilds only the app layer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.build import fingerprint
from sandbox.build.applayer import apply_app_layer
from sandbox.build.base import remove_mountpoint_dirs, run_mmdebstrap, stop_leftover_mmdebstrap
from sandbox.build.debcache import PackageCache
from sandbox.build.formats import APP_FORMAT, BASE_FORMAT
from sandbox.build.hostapt import PrivateApt, host_sources
from sandbox.build.keys import doc_digest, rel_to, tree_digest
from sandbox.build.lock import Lock, lock_path, package_inputs, read_lock, resolve, write_lock
from sandbox.build.normalize import clean_rootfs, write_layer
from sandbox.build.overlay import build_ids, overlay
from sandbox.config import LoadedRecipe, load_recipe
from sandbox.errors import BuildError, ConfigError, ConfigIssue, LockError
from sandbox.events import Event, EventSink, null_sink
from sandbox.fsutil import pid_alive, private_dir, remove_tree
from sandbox.store import ImageStore
from sandbox.store.layers import merge_indexes
from sandbox.store.store import TAG
from sandbox.workspace import Workspace

MANIFEST_SCHEMA = 1


@dataclass
class BuildResult:
    digest: str
    recipe: str
    ref: str
    lock_created: bool
    cached: dict[str, bool] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    flavours: dict[str, str] = field(default_factory=dict)  # e.g. {"vm": digest} (`--flavour vm`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "recipe": self.recipe,
            "ref": self.ref,
            "lock_created": self.lock_created,
            "cached": self.cached,
            "layers": self.layers,
            "seconds": round(self.seconds, 3),
            **({"flavours": self.flavours} if self.flavours else {}),
        }


@contextlib.contextmanager
def _phase(sink: EventSink, name: str, message: str) -> Iterator[None]:
    t0 = time.monotonic()
    sink(Event("phase-start", phase=name, message=message))
    yield
    sink(Event("phase-end", phase=name, message=message, data={"seconds": round(time.monotonic() - t0, 3)}))


class Builder:
    def __init__(self, ws: Workspace, sink: EventSink = null_sink) -> None:
        self.ws = ws
        self.sink = sink
        self.store = ImageStore(ws.images)
        self.packages = PackageCache(ws.cache / "debs")

    # -- lock --------------------------------------------------------------
    def _apt(self, loaded: LoadedRecipe) -> PrivateApt:
        return self._private_apt(loaded.recipe.base.suite, loaded.recipe.base.architecture)

    def _private_apt(self, suite: str, architecture: str) -> PrivateApt:
        """apt on the host's sources with its own state in the cache, one per suite and architecture."""
        apt = PrivateApt(
            self.ws.cache / "apt" / f"{suite}-{architecture}", suite, architecture, host_sources(suite)
        )
        apt.prepare()
        return apt

    def lock(self, recipe_ref: str) -> tuple[Lock, Path]:
        """Resolve the recipe's packages and write RECIPE.lock."""
        loaded = self.load(recipe_ref)
        with self._exclusive():
            return self._relock(loaded), lock_path(loaded.path)

    def _relock(self, loaded: LoadedRecipe) -> Lock:
        with _phase(self.sink, "lock", "resolving packages"):
            apt = self._apt(loaded)
            apt.update()
            lock = resolve(loaded, apt)
            write_lock(lock_path(loaded.path), lock)
        return lock

    def load(self, recipe_ref: str) -> LoadedRecipe:
        with _phase(self.sink, "load", "checking the recipe"):
            loaded = load_recipe(self.ws.recipe_path(recipe_ref), display_root=self.ws.root)
        if loaded.recipe.name != loaded.path.stem:
            where = loaded.where(("name",))
            raise ConfigError(
                [
                    ConfigIssue(
                        where,
                        "name",
                        f"recipe name {loaded.recipe.name!r} differs from its file name {loaded.path.name!r}",
                        hint=f"rename the file to {loaded.recipe.name}.yaml or change name:",
                    )
                ]
            )
        return loaded

    def current_lock(self, loaded: LoadedRecipe, *, locked: bool) -> tuple[Lock, bool]:
        path = lock_path(loaded.path)
        rel = rel_to(path, self.ws.root)
        if not path.is_file():
            if locked:
                raise LockError(
                    f"{rel} does not exist and --locked was given",
                    hint=f"create it with `sandbox lock {loaded.recipe.name}`",
                )
            return self._relock(loaded), True
        lock = read_lock(path)
        if lock.inputs != package_inputs(loaded):
            if locked:
                raise LockError(
                    f"{rel} no longer matches the recipe's base or packages",
                    hint=f"update it with `sandbox lock {loaded.recipe.name}`",
                )
            self.sink(Event("warning", phase="lock", message=f"{rel} is stale: re-resolving packages"))
            return self._relock(loaded), True
        return lock, False

    # -- build -------------------------------------------------------------
    def build(
        self, recipe_ref: str, *, locked: bool = False, tag: str | None = None, record: bool = True
    ) -> BuildResult:
        """Build the recipe (cached per layer). `record=False` leaves the workspace's fingerprint of
        the recipe alone: for a build of other inputs than the workspace's own (a commit's tree)."""
        t0 = time.monotonic()
        if tag is not None and not TAG.fullmatch(tag):
            raise BuildError(
                f"invalid tag {tag!r}", hint="tags are lower-case letters, digits, '.', '_' and '-'"
            )
        os.umask(0o022)  # the image must not depend on the caller's umask
        loaded = self.load(recipe_ref)
        with self._exclusive():
            lock, created = self.current_lock(loaded, locked=locked)
            self.store.clean()
            self._clean_stale_builds()
            base_key = doc_digest({"lock": lock.digest, "format": BASE_FORMAT})
            app_key = doc_digest(
                {"base": base_key, "app": self._app_inputs(loaded, lock), "format": APP_FORMAT}
            )
            cached = {"base": False, "app": False, "image": False}
            image = self.store.cache_get("image", app_key)
            if image is None:
                base_digest, cached["base"] = self._base_layer(lock, base_key)
                app_digest, cached["app"] = self._app_layer(loaded, lock, base_digest, app_key)
                image = self._commit(loaded, lock, base_digest, app_digest)
                self.store.cache_put("image", app_key, image)
            else:
                cached = {"base": True, "app": True, "image": True}
            name = loaded.recipe.name
            self.store.set_ref(name, "latest", image)
            if tag:
                self.store.set_ref(name, tag, image)
            manifest = self.store.manifest(image)
            if record:
                inputs = [
                    lock_path(loaded.path),
                    *(rf.src for rf in loaded.resolved_files if rf.src is not None),
                ]
                fingerprint.record(self.ws, name, inputs, image, (BASE_FORMAT, APP_FORMAT))
        return BuildResult(
            digest=image,
            recipe=name,
            ref=f"{name}:{tag or 'latest'}",
            lock_created=created,
            cached=cached,
            layers=manifest["layers"],
            seconds=time.monotonic() - t0,
        )

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.ws.state.mkdir(parents=True, exist_ok=True)
        with open(self.ws.state / "build.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.sink(Event("log", phase="load", message="waiting for another build in this workspace"))
                fcntl.flock(f, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def _workdir(self) -> Iterator[Path]:
        """A scratch dir named after this pid, so a later build can clean it if we die."""
        self.ws.tmp.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=self.ws.tmp, prefix=f"build-{os.getpid()}-"))
        try:
            yield work
        finally:
            remove_tree(work)

    def _clean_stale_builds(self) -> None:
        """Remove work dirs of builds that died (kill -9), unmounting what they left mounted."""
        if not self.ws.tmp.is_dir():
            return
        for d in self.ws.tmp.iterdir():
            m = re.match(r"build-(\d+)-", d.name)
            if m and not pid_alive(int(m.group(1))):
                self.sink(
                    Event(
                        "log", phase="load", message=f"removing leftovers of an interrupted build: {d.name}"
                    )
                )
                stop_leftover_mmdebstrap(d)
                remove_tree(d)

    def forget_layers(self, digests: list[str]) -> None:
        """Drop the unpacked copies of layers that left the store (after `image rm`)."""
        for d in digests:
            path = self._rootfs(d)
            if path.is_dir():
                remove_tree(path)

    def _rootfs_dir(self) -> Path:
        """The unpacked base layers: setuid binaries owned by host root, so root's only."""
        return private_dir(self.ws.cache / "rootfs")

    def _rootfs(self, base_digest: str) -> Path:
        return self.ws.cache / "rootfs" / base_digest.removeprefix("sha256:")

    def _base_layer(self, lock: Lock, key: str) -> tuple[str, bool]:
        digest = self.store.cache_get("base", key)
        if digest is not None:
            if not self._rootfs(digest).is_dir():
                self._unpack(digest)
            return digest, True
        missing = self.packages.missing(lock)
        if missing:
            with _phase(self.sink, "fetch", f"downloading {len(missing)} packages"):
                apt = self._apt_for_lock(lock)
                self.packages.fetch(
                    lock, lambda: apt, lambda m: self.sink(Event("progress", phase="fetch", message=m))
                )
        with self._workdir() as work:
            with _phase(self.sink, "base", f"installing {len(lock.packages)} packages (mmdebstrap)"):
                source = self.packages.make_repo(lock, work / "repo")
                run_mmdebstrap(lock, work / "rootfs", source, self.sink)
                remove_mountpoint_dirs(work / "rootfs", (work / "repo").resolve())
                clean_rootfs(work / "rootfs")
            with _phase(self.sink, "normalize", "writing the base layer"):
                digest, _size, index = self.store.put_blob(
                    lambda f: write_layer(work / "rootfs", f, lock.source_date_epoch)
                )
                self.store.put_layer_index(digest, index)
                self._keep_rootfs(work / "rootfs", digest)
                self.store.cache_put("base", key, digest)
        return digest, False

    def _apt_for_lock(self, lock: Lock) -> PrivateApt:
        return self._private_apt(lock.suite, lock.architecture)

    def _unpack(self, digest: str) -> None:
        """Re-create the unpacked base from its blob (a cache that was cleared)."""
        with _phase(self.sink, "unpack", "unpacking the cached base layer"), self._workdir() as work:
            out = work / "rootfs"
            out.mkdir()
            p = subprocess.run(
                [
                    "tar",
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "-xpf",
                    str(self.store.blob_path(digest)),
                    "-C",
                    str(out),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if p.returncode != 0:
                raise BuildError(f"cannot unpack base layer {digest[:19]}: {p.stderr.strip()}")
            self._keep_rootfs(out, digest)

    def _keep_rootfs(self, rootfs: Path, digest: str) -> None:
        """Move an unpacked base into the shared cache; a dir already there has the same content."""
        dest = self._rootfs(digest)
        self._rootfs_dir()
        try:
            os.rename(rootfs, dest)
        except OSError:
            if not dest.is_dir():
                raise

    def _app_inputs(self, loaded: LoadedRecipe, lock: Lock) -> dict[str, Any]:
        files = []
        for rf in loaded.resolved_files:
            if rf.src is not None:
                files.append({"index": rf.index, "src": tree_digest(rf.src)})
            else:
                files.append({"index": rf.index, "content": hashlib.sha256(rf.content or b"").hexdigest()})
        return {
            "recipe": loaded.inputs_digest(),
            "files": files,
            "keys": loaded.keys,
            "sde": lock.source_date_epoch,
        }

    def _app_layer(self, loaded: LoadedRecipe, lock: Lock, base_digest: str, key: str) -> tuple[str, bool]:
        digest = self.store.cache_get("app", key)
        if digest is not None:
            return digest, True
        sde = lock.source_date_epoch
        with self._workdir() as work:
            applying = _phase(self.sink, "app", "applying users, files, cron, services and the app")
            ids = build_ids(self.ws)
            with applying, overlay(self._rootfs(base_digest), work / "overlay", ids) as (merged, _upper):
                apply_app_layer(merged, loaded, sde, self.sink)
                clean_rootfs(merged)
            with _phase(self.sink, "layer", "writing the app layer"):
                digest, _size, index = self.store.put_blob(
                    lambda f: write_layer(work / "overlay" / "upper", f, sde, overlay_upper=True)
                )
                self.store.put_layer_index(digest, index)
                self.store.cache_put("app", key, digest)
        return digest, False

    def _commit(self, loaded: LoadedRecipe, lock: Lock, base: str, app: str) -> str:
        with _phase(self.sink, "store", "writing the manifest"):
            r = loaded.recipe
            layers = [
                {"kind": kind, "digest": d, "size": self.store.blob_path(d).stat().st_size}
                for kind, d in (("base", base), ("app", app))
            ]
            files = merge_indexes([self.store.layer_index(base), self.store.layer_index(app)])
            manifest = {
                "schema": MANIFEST_SCHEMA,
                "recipe": {
                    "name": r.name,
                    "digest": loaded.inputs_digest(),
                    "sources": [rel_to(p, self.ws.root) for p in loaded.sources],
                },
                "lock": {"digest": lock.digest, "source_date_epoch": lock.source_date_epoch},
                "base": {
                    "distro": r.base.distro,
                    "suite": lock.suite,
                    "variant": lock.variant,
                    "architecture": lock.architecture,
                },
                "created": lock.source_date_epoch,
                "layers": layers,
                "packages": lock.package_versions,
                "users": [u.model_dump(mode="json") for u in r.users],
                "app": r.app.model_dump(mode="json") if r.app else None,
                "files": files,
            }
            return self.store.put_manifest(manifest)
