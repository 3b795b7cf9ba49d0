"""How fast the CLI answers: `sandbox --help`, shell completion, `sandbox doctor`, beside anchors.

    python bench/cli_bench.py [--runs 15] [--compare DIR] [--json]

Each row is the wall time of a fresh process (what a shell pays per command or per TAB), the median
of --runs runs, the runs of all rows interleaved so that a burst of load on the machine spreads over
all of them. Anchors: `python3 -c pass` (the interpreter alone: every row pays it), the same
interpreter importing click (the floor of any click CLI), and `lxc-ls --version` / `docker --version`
when installed (other tools' CLIs). `ratio` is median / the python3 -c pass anchor.
--compare DIR adds the same sandbox rows run with another checkout's code (say the main branch
before a change), same interpreter, interleaved with the others: before/after under the same load.
Targets (issue 13): --help and completion < 150 ms, doctor < 1 s. Not a test: it reports numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS_MS = {
    "sandbox --help": 150,
    "complete: sandbox <TAB>": 150,
    "complete: sandbox up <TAB>": 150,
    "complete: sandbox image inspect <TAB>": 150,
    "sandbox doctor --json": 1000,
}


def comp(words: str) -> dict[str, str]:
    return {"COMP_WORDS": words, "COMP_CWORD": str(len(words.split())), "_SANDBOX_COMPLETE": "bash_complete"}


Row = tuple[str, list[str], dict[str, str], Path]


def anchors() -> list[Row]:
    py = sys.executable
    out: list[Row] = [
        ("anchor: python3 -c pass", [py, "-c", "pass"], {}, REPO),
        ("anchor: python3 -c 'import click'", [py, "-c", "import click"], {}, REPO),
    ]
    for tool, argv in (("lxc-ls", ["lxc-ls", "--version"]), ("docker", ["docker", "--version"])):
        if shutil.which(tool):
            out.append((f"anchor: {' '.join(argv)}", argv, {}, REPO))
    return out


def sandbox_rows(repo: Path, suffix: str = "") -> list[Row]:
    """The workspace is always this checkout (-C); `repo` only chooses whose code runs."""
    py = sys.executable
    sb = [py, "-m", "sandbox", "-C", str(REPO)]
    out: list[Row] = [
        ("sandbox --help" + suffix, [*sb, "--help"], {}, repo),
        ("complete: sandbox <TAB>" + suffix, [py, "-m", "sandbox"], comp("sandbox "), repo),
        ("complete: sandbox up <TAB>" + suffix, [py, "-m", "sandbox"], comp(f"sandbox -C {REPO} up "), repo),
        (
            "complete: sandbox image inspect <TAB>" + suffix,
            [py, "-m", "sandbox"],
            comp(f"sandbox -C {REPO} image inspect "),
            repo,
        ),
    ]
    if (repo / "sandbox" / "doctor").is_dir():
        out.append(("sandbox doctor --json" + suffix, [*sb, "doctor", "--json"], {}, repo))
    return out


def once(argv: list[str], env: dict[str, str], repo: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        argv,
        cwd=repo,  # `-m sandbox` takes the package of the checkout in the current dir
        env={**os.environ, "PYTHONPATH": str(repo), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--compare", type=Path, help="another checkout whose code runs the same rows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    table = anchors() + sandbox_rows(REPO)
    if args.compare:
        table += sandbox_rows(args.compare.resolve(), f" [{args.compare.name}]")
    times: dict[str, list[float]] = {name: [] for name, _, _, _ in table}
    for _name, argv, env, repo in table:  # warm the page cache and __pycache__
        once(argv, env, repo)
    for _ in range(max(1, min(args.runs, 200))):
        for name, argv, env, repo in table:
            times[name].append(once(argv, env, repo))
    anchor = statistics.median(times["anchor: python3 -c pass"])
    result = {
        "repo": str(REPO),
        "compare": str(args.compare) if args.compare else None,
        "runs": args.runs,
        "load_avg": os.getloadavg()[0],
        "rows": [
            {
                "name": name,
                "median_ms": round(statistics.median(t), 1),
                "min_ms": round(min(t), 1),
                "max_ms": round(max(t), 1),
                "ratio_to_python": round(statistics.median(t) / anchor, 2),
                "target_ms": TARGETS_MS.get(name),
            }
            for name, t in times.items()
        ],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.runs} runs each, interleaved; load average {result['load_avg']:.2f}")
    print(f"{'':46} {'median':>8} {'min':>8} {'max':>8} {'ratio':>6}  target")
    for r in result["rows"]:
        target = f"< {r['target_ms']} ms" if r["target_ms"] else ""
        print(
            f"{r['name']:46} {r['median_ms']:>6.1f}ms {r['min_ms']:>6.1f}ms {r['max_ms']:>6.1f}ms "
            f"{r['ratio_to_python']:>5.1f}x  {target}"
        )


if __name__ == "__main__":
    main()
