"""`sandbox promote` and `sandbox rollback`: replace an env's image while it keeps serving.

The swap converges: it reads where the env is from the state DB (which
instance runs which image, which ones the router sends traffic to) and takes
the next safe step, so the same code starts a promotion, resumes one after a
crash and rolls one back:

    start a new instance → health check → route it and unroute an old one → drain → stop

The route step reloads nothing: the router's Lua balancer takes the new backend list through its
control socket, and the drain waits for the old instance's requests in flight to reach 0.

There are never fewer healthy routed backends than before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sandbox.envs import Envs
from sandbox.envs.probes import wait_until
from sandbox.errors import SandboxError
from sandbox.events import Event
from sandbox.hosts.transport import HostError
from sandbox.promote.deploys import Deploy, Deploys, Verification
from sandbox.promote.plan import Plan, make_plan
from sandbox.state import Env, Instance
from sandbox.store import diff_manifests
from sandbox.store.layers import read_files


class PromotionError(SandboxError):
    """The promotion stopped; what was swapped has been rolled back."""


class GateError(SandboxError):
    """The candidate image has not been verified."""


@dataclass
class PromoteResult:
    env: str
    from_image: str
    to_image: str
    plan: Plan
    deploy: int | None = None
    seconds: float = 0.0
    per_backend: list[float] = field(default_factory=list)
    diff: dict[str, Any] = field(default_factory=dict)
    state: str = "planned"

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "plan"}, "plan": self.plan.to_dict()}


class Promoter:
    def __init__(self, envs: Envs) -> None:
        self.envs = envs
        self.state = envs.state
        self.deploys = Deploys(envs.state)
        self.sink = envs.sink

    def _emit(self, message: str) -> None:
        self.sink(Event("progress", phase="promote", message=message))

    def history(self, target: str, limit: int = 20) -> list[Deploy]:
        """Promotions and rollbacks of `target`, newest first."""
        return self.deploys.history(target, limit)

    # -- verification ------------------------------------------------------
    def verify(self, name: str) -> tuple[bool, str]:
        """Health plus the recipe's smoke command on every instance; recorded for the promotion gate."""
        env = self.state.get_env(name)
        app = self.envs.app(env.image)
        details = []
        ok = True
        try:
            self.envs.wait_healthy(name)
        except SandboxError as e:
            ok, details = False, [e.message]
        if ok and app.smoke:
            for index, inst in enumerate(self.state.instances(name)):
                r = self.envs.exec(name, ["/bin/sh", "-c", app.smoke], index, user=app.user)
                if r.code != 0:
                    ok = False
                    details.append(
                        f"{inst.name}: smoke `{app.smoke}` exited {r.code}: "
                        f"{(r.stderr or r.stdout).strip()[-300:]}"
                    )
        detail = "; ".join(details) or ("healthy, smoke passed" if app.smoke else "healthy")
        self.deploys.record_verification(env.image, name, ok, detail)
        return ok, detail

    def latest_verified(self, target: str) -> Verification:
        """The image to promote into `target` when none is named: the one most recently verified on
        another env, built from the recipe `target` runs and still in the store."""
        recipe = self._recipe(self.state.get_env(target).image)
        digests = set(self.envs.store.digests())
        for v in self.deploys.verifications():
            if v.env != target and v.image in digests and self._recipe(v.image) == recipe:
                return v
        raise GateError(
            f"no image of recipe {recipe} has passed `sandbox verify` on an env other than {target}",
            hint="sandbox up staging-1 --wait && sandbox verify staging-1, "
            f"then sandbox promote --to {target}",
        )

    def _recipe(self, image: str) -> str:
        return str(self.envs.store.summary(image)["recipe"]["name"])

    def _index(self, name: str, inst: Instance) -> int:
        return [i.name for i in self.state.instances(name)].index(inst.name)

    # -- planning ----------------------------------------------------------
    def plan(self, target: str, candidate: str) -> PromoteResult:
        env = self.state.get_env(target)
        store = self.envs.store
        d = diff_manifests(env.image, store.manifest(env.image), candidate, store.manifest(candidate))
        plan = make_plan(d, store.summary(candidate).get("app"), compatible=env.spec.promotion.compatible)
        return PromoteResult(target, env.image, candidate, plan, diff=d.to_dict())

    # -- promote / rollback / resume ---------------------------------------
    def promote(
        self,
        target: str,
        candidate: str,
        *,
        source: str | None = None,
        force: bool = False,
        kind: str = "promote",
    ) -> PromoteResult:
        t0 = time.monotonic()
        result = self.plan(target, candidate)
        env = self.state.get_env(target)
        if env.state != "running":
            raise PromotionError(f"{target} is {env.state}, not running", hint=f"sandbox start {target}")
        self.deploys.ensure_free(target)  # even "nothing to do" is not true while a deploy is half done
        if result.plan.strategy == "noop":
            result.state = "noop"
            return result
        if kind == "promote" and env.spec.promotion.require_verified and not force:
            where = [e for e in self.deploys.verified_on(candidate) if e != target]
            if not where:
                raise GateError(
                    f"image {candidate[:19]} has not passed `sandbox verify` on a staging env",
                    hint="sandbox up staging-N --image IMAGE && sandbox verify staging-N, "
                    "or --force (recorded in the history)",
                )
        # every host reachable and holding the verified image before any traffic changes
        self.envs.hosts_ready(target, candidate)
        self.envs.router_lock(target, take=True)
        try:
            deploy = self.deploys.begin(
                target, env.image, candidate, result.plan.strategy, kind=kind, source=source, forced=force
            )
            result.deploy = deploy.id
            self._run(deploy, result)
        finally:
            self._unlock(target)
        result.seconds = time.monotonic() - t0
        return result

    def resume(self, target: str) -> PromoteResult:
        d = self.deploys.interrupted(target)
        if d is None:
            raise PromotionError(f"no interrupted promotion of {target}", hint=f"sandbox history {target}")
        self.envs.hosts_ready(target, d.to_image)
        self.envs.router_lock(target, take=True)
        d = self.deploys.take_over(d)
        self.deploys.step(d.id, "resumed")
        t0 = time.monotonic()
        result = PromoteResult(target, d.from_image, d.to_image, Plan(d.strategy, ["resumed"]), deploy=d.id)
        try:
            self._run(d, result)
        finally:
            self._unlock(target)
        result.seconds = time.monotonic() - t0
        return result

    def rollback_target(self, target: str) -> str:
        """The image `rollback(target)` goes back to (PromotionError when there is none)."""
        d = self.deploys.interrupted(target)
        if d is not None:
            return d.from_image
        previous = self.deploys.previous_image(target)
        if previous is None:
            raise PromotionError(
                f"{target} has no earlier image to roll back to", hint=f"sandbox history {target}"
            )
        return previous

    def rollback(self, target: str) -> PromoteResult:
        """Back to the image before the last promotion (finishing an interrupted one backwards)."""
        d = self.deploys.interrupted(target)
        if d is not None:
            self.envs.hosts_ready(target, d.from_image)
            self.envs.router_lock(target, take=True)
            d = self.deploys.take_over(d)
            self.deploys.step(d.id, "rolling back")
            t0 = time.monotonic()
            result = PromoteResult(
                target, d.to_image, d.from_image, Plan("rolling", ["interrupted"]), deploy=d.id
            )
            self._converge(d, d.from_image, result)
            self._finish_modes(target, d.strategy)
            self.state.set_env(target, image=d.from_image)
            self.deploys.finish(d.id, "rolled-back")
            self._unlock(target)
            result.seconds, result.state = time.monotonic() - t0, "rolled-back"
            return result
        return self.promote(target, self.rollback_target(target), kind="rollback", source="rollback")

    # -- the swap ----------------------------------------------------------
    def _run(self, d: Deploy, result: PromoteResult) -> None:
        strategy = d.strategy
        try:
            if strategy == "static":
                self._static(d)
            else:
                if strategy == "maintenance":
                    allow = self.state.get_env(d.env).spec.promotion.allow
                    self.envs.set_maintenance(d.env, allow)
                    self.deploys.step(d.id, "maintenance on")
                if strategy == "migrate":
                    self._migrate(d)
                self._converge(d, d.to_image, result)
            self._finish_modes(d.env, strategy)
            self.state.set_env(d.env, image=d.to_image)
            self.deploys.finish(d.id, "done")
            result.state = "done"
            self.state.event(
                d.kind, f"{d.kind} {d.from_image[:19]} → {d.to_image[:19]} ({strategy})", env=d.env
            )
        except HostError as e:
            self._host_failed(d, e)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt | SystemExit):
                raise  # leave it resumable
            self.sink(Event("warning", phase="promote", message=f"{e}; rolling back"))
            self.deploys.step(d.id, "rolling back", error=str(e))
            self._converge(d, d.from_image, result)
            self._finish_modes(d.env, strategy)
            self.deploys.finish(d.id, "rolled-back", error=str(e))
            self.state.event(d.kind, f"rolled back: {e}", env=d.env)
            raise PromotionError(
                f"{d.kind} of {d.env} stopped and was rolled back: {e}",
                hint=f"sandbox history {d.env}; sandbox logs {d.env}",
            ) from e

    def _unlock(self, target: str) -> None:
        """Release the router host's deploy lock, unless the deploy is left to resume (a host failed)."""
        if self.deploys.running(target) is None:
            self.envs.router_lock(target, take=False)

    def _host_failed(self, d: Deploy, e: HostError) -> None:
        """A host stopped answering mid-way: take its instances out of the router (traffic goes only
        to the others), stop, and leave the deploy for `--resume` or `rollback`, which need the host
        back (or `sandbox host drain`). Rolling back now would have to touch the dead host too."""
        gone = self.envs.unroute_host(d.env, e.host) if e.host else []
        self.deploys.step(d.id, "host failed", host=e.host, error=e.message, unrouted=[i.name for i in gone])
        self.deploys.release(d.id)
        self.state.event(d.kind, f"stopped: host {e.host} failed: {e.message}", env=d.env)
        raise PromotionError(
            f"{d.kind} of {d.env} stopped: host {e.host or '?'} failed ({e.message}); "
            f"its {len(gone)} instance(s) no longer get traffic",
            hint=f"when {e.host} is back: sandbox promote --to {d.env} --resume (or sandbox rollback "
            f"--to {d.env}); if it never returns: sandbox host drain {d.env} {e.host}",
        ) from e

    def _finish_modes(self, env: str, strategy: str) -> None:
        """Undo the mode this strategy switched on (modes switched on by hand stay)."""
        if strategy == "migrate":
            self.envs.set_readonly(env, False)
        elif strategy == "maintenance":
            self.envs.set_maintenance(env, None)

    def _converge(self, d: Deploy, image: str, result: PromoteResult) -> None:
        """Replace every instance not running `image`, one at a time; safe to repeat after a crash."""
        env = self.state.get_env(d.env)
        drain = env.spec.router.drain_timeout if env.spec.router else 30.0
        self.envs.reroute(d.env)  # the router matches the state, whatever happened before
        for inst in self.state.instances(d.env):
            if inst.image == image and not inst.routed:  # half-made by an interrupted run
                self.envs.remove_instance(d.env, inst)
        wanted = env.spec.instances
        for old in [i for i in self.state.instances(d.env) if i.image != image]:
            t0 = time.monotonic()
            routed = [i for i in self.state.instances(d.env) if i.routed]
            if old.routed and len(routed) > wanted:
                # its replacement is already routed (a crash between "routed" and "unrouted")
                self.state.set_instance(d.env, old.idx, routed=False)
                self.envs.reroute(d.env)
                self.deploys.step(d.id, "unrouted", instance=old.name)
            elif old.routed:
                new = self._start_healthy(d, env, image, old.host)
                self._swap_routes(d, new, old)
            elif len(routed) < wanted:  # unrouted when its host failed: its replacement goes in first
                self._route(d, self._start_healthy(d, env, image, old.host))
            self._emit(f"draining {old.name}")
            if not self.envs.drain(d.env, old, drain):
                self.deploys.step(d.id, "drain timeout", instance=old.name)
            self.envs.remove_instance(d.env, old)
            self.deploys.step(d.id, "stopped", instance=old.name)
            result.per_backend.append(round(time.monotonic() - t0, 3))
        for host in self._missing_hosts(d.env, env, image):  # back to the profile's count
            self._route(d, self._start_healthy(d, env, image, host))

    def _route(self, d: Deploy, new: Instance) -> None:
        self.state.set_instance(d.env, new.idx, routed=True)
        self.envs.reroute(d.env)
        self.deploys.step(d.id, "routed", instance=new.name)

    def _missing_hosts(self, name: str, env: Env, image: str) -> list[str | None]:
        """Where instances are missing to reach the profile's count (instances forgotten with `host
        drain` come back on the hosts that remain in the profile)."""
        have = [i.host for i in self.state.instances(name) if i.routed and i.image == image]
        want: list[str | None] = list(self.envs.placement(name))
        for h in have:
            if h in want:
                want.remove(h)
        return want[: max(0, env.spec.instances - len(have))]

    def _swap_routes(self, d: Deploy, new: Instance, old: Instance) -> None:
        """Route the healthy `new` instance and unroute `old` in ONE update of the balancer.

        The upstream goes from N to N backends (never fewer healthy ones) through the router's
        control socket: no reload, so no idle keep-alive connection of a client is closed.
        A crash between the two state writes leaves both routed; `_converge` then unroutes
        the old one on resume.
        """
        self.state.set_instance(d.env, new.idx, routed=True)
        self.state.set_instance(d.env, old.idx, routed=False)
        self.envs.reroute(d.env)
        self.deploys.step(d.id, "routed", instance=new.name)
        self.deploys.step(d.id, "unrouted", instance=old.name)

    def _start_healthy(self, d: Deploy, env: Env, image: str, host: str | None = None) -> Instance:
        health = env.spec.health
        self._emit("starting a new instance" + (f" on {host}" if host else ""))
        new = self.envs.new_instance(d.env, image, host)
        self.deploys.step(d.id, "started", instance=new.name, address=new.address, host=new.host)
        probe, took = wait_until(
            lambda: self.envs.probe_instance(d.env, new, image),
            health.timeout,
            health.interval,
        )
        if not probe.ok:
            self.deploys.step(d.id, "unhealthy", instance=new.name, detail=probe.detail)
            self.envs.remove_instance(d.env, new)
            raise PromotionError(f"new instance {new.name} did not become healthy: {probe.detail}")
        self.deploys.step(d.id, "healthy", instance=new.name, seconds=round(took, 3))
        return new

    def _migrate(self, d: Deploy) -> None:
        env = self.state.get_env(d.env)
        app = self.envs.app(d.to_image)
        self.envs.set_readonly(d.env, True)
        self.deploys.step(d.id, "read-only on")
        if app.migrate:
            new = self._start_healthy(d, env, d.to_image)
            index = self._index(d.env, new)
            r = self.envs.exec(d.env, ["/bin/sh", "-c", app.migrate], index, user=app.user)
            if r.code != 0:
                self.envs.remove_instance(d.env, new)
                raise PromotionError(
                    f"migration `{app.migrate}` exited {r.code}: {(r.stderr or r.stdout).strip()[-300:]}"
                )
            self.deploys.step(d.id, "migrated", instance=new.name)
            # the migrated instance joins the pool; _converge then replaces an old one for it
            olds = [i for i in self.state.instances(d.env) if i.image != d.to_image and i.routed]
            if olds:
                self._swap_routes(d, new, olds[0])
            else:
                self.state.set_instance(d.env, new.idx, routed=True)
                self.envs.reroute(d.env)

    def _static(self, d: Deploy) -> None:
        """Only static files changed: copy them into the running instances, no restart."""
        store = self.envs.store
        plan = self.plan(d.env, d.to_image).plan
        want = store.manifest(d.to_image)["files"]
        blobs = [store.blob_path(la["digest"]) for la in store.manifest(d.to_image)["layers"]]
        contents = read_files(blobs, [p for p in plan.static_files if p in want])
        for i, inst in enumerate(self.state.instances(d.env)):
            for path in plan.static_files:
                if path in want and want[path]["type"] == "file":
                    meta = want[path]
                    self.envs.put_file(
                        d.env, i, path, contents[path], int(meta["mode"], 8), meta["uid"], meta["gid"]
                    )
                elif path not in want:
                    self.envs.exec(d.env, ["rm", "-f", path], i)
            self.state.set_instance(d.env, inst.idx, image=d.to_image)
            self.deploys.step(d.id, "synced", instance=inst.name, files=len(plan.static_files))
