"""Maintenance commands of the example app: migrate, cleanup, smoke."""

import glob
import os
import sqlite3
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import settings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def migrate() -> None:
    os.makedirs(settings.DATA_DIR, exist_ok=True)
    db = sqlite3.connect(os.path.join(settings.DATA_DIR, "app.db"))
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY)")
    done = {row[0] for row in db.execute("SELECT name FROM migrations")}
    for path in sorted(glob.glob(os.path.join(HERE, "migrations", "*.sql"))):
        name = os.path.basename(path)
        if name not in done:
            with open(path) as f:
                db.executescript(f.read())
            db.execute("INSERT INTO migrations (name) VALUES (?)", (name,))
            print(f"applied {name}")
    db.commit()


def cleanup() -> None:
    for name in os.listdir("/tmp"):
        if name.startswith("app-") and name.endswith(".tmp"):
            os.unlink(os.path.join("/tmp", name))


def smoke() -> None:
    with urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=5) as r:
        assert r.status == 200, r.status


if __name__ == "__main__":
    {"migrate": migrate, "cleanup": cleanup, "smoke": smoke}[sys.argv[1]]()
