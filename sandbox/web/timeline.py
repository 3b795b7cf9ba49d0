"""Root side: the deploy timeline and the audit log, as plain data for the pages.

A deploy row (sandbox/promote/deploys.py) knows its env, images, strategy, steps and end, but not
who started it: that is the job that ran it (`promote`, `rollback` or `resume` of the env, running
when the deploy began). A deploy without such a job came from root's CLI. The probe's per-second
series rides in the deploy's `probe` step (sandbox/promote/probe.py, `--probe RPS`).

The audit log is every job (who queued what, from which trigger, how it ended) and the `audit`
rows of the events table: logins (also failed ones), logouts and cancels, recorded by the root side.
"""

from __future__ import annotations

import json
from typing import Any

from sandbox.promote.deploys import Deploys
from sandbox.state import StateDB

RUNS_DEPLOYS = ("promote", "rollback", "resume")


def _job_of(state: StateDB, d: dict[str, Any]) -> dict[str, Any] | None:
    kinds = ", ".join(f"'{k}'" for k in RUNS_DEPLOYS)
    with state.transaction(write=False) as c:
        row = c.execute(
            f"SELECT id, who, trigger, args FROM jobs WHERE env = ? AND kind IN ({kinds})"
            " AND started <= ? AND (finished IS NULL OR finished >= ?) ORDER BY id DESC LIMIT 1",
            (d["env"], d["started"] + 1, d["started"]),
        ).fetchone()
    if row is None:
        return None
    return {"id": row["id"], "who": row["who"], "trigger": row["trigger"], "args": json.loads(row["args"])}


def deploy_view(state: StateDB, d: dict[str, Any], full: bool) -> dict[str, Any]:
    steps = [s for s in d["steps"] if s.get("step") != "probe"]
    probe = next((s for s in reversed(d["steps"]) if s.get("step") == "probe"), None)
    job = _job_of(state, d)
    end = d["finished"] or d["updated"]
    out = {
        **{k: d[k] for k in ("id", "env", "kind", "strategy", "from_image", "to_image", "state", "error")},
        **{k: d[k] for k in ("started", "finished", "forced", "source")},
        "seconds": round(end - d["started"], 1) if end else None,
        "who": job["who"] if job else "root",
        "trigger": job["trigger"] if job else "cli",
        "job": job["id"] if job else None,
        "commit": (job["args"].get("commit") if job else None),
        "step": steps[-1]["step"] if steps else None,
        "probe": bool(probe),
    }
    if full:
        out["steps"] = steps
        out["series"] = probe.get("series", []) if probe else []
        out["phases"] = probe.get("phases", {}) if probe else {}
    return out


def deploys(state: StateDB, envs: list[str], limit: int) -> list[dict[str, Any]]:
    """The newest `limit` deploys of `envs`, newest first."""
    rows: list[dict[str, Any]] = []
    for env in envs:
        rows += [d.to_dict() for d in Deploys(state).history(env, limit)]
    rows.sort(key=lambda d: d["id"], reverse=True)
    return [deploy_view(state, d, False) for d in rows[:limit]]


def deploy(state: StateDB, deploy_id: int) -> dict[str, Any]:
    return deploy_view(state, Deploys(state).get(deploy_id).to_dict(), True)


def record(state: StateDB, who: str, action: str, message: str, env: str | None = None, **data: Any) -> None:
    state.event("audit", message, env=env, data={"who": who, "action": action, **data})


def audit(state: StateDB, limit: int) -> list[dict[str, Any]]:
    """Jobs and audit events, newest first: `{ts, who, action, env, detail}`."""
    with state.transaction(write=False) as c:
        jobs = c.execute(
            "SELECT id, kind, env, who, trigger, state, created, error FROM jobs ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        evs = c.execute(
            "SELECT ts, env, message, data FROM events WHERE kind = 'audit' ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
    rows = [
        {
            "ts": j["created"],
            "who": j["who"],
            "action": f"{j['kind']} (job #{j['id']}, {j['trigger']})",
            "env": j["env"],
            "detail": j["state"] + (f": {j['error'][:200]}" if j["error"] else ""),
        }
        for j in jobs
    ]
    for e in evs:
        data = json.loads(e["data"])
        rows.append(
            {"ts": e["ts"], "who": data.get("who", "?"), "action": data.get("action", "?"), "env": e["env"]}
            | {"detail": e["message"]}
        )
    rows.sort(key=lambda r: r["ts"], reverse=True)
    return rows[:limit]
