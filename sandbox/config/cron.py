"""Cron expressions: the five fields of crontab(5) parsed into sets, and when they fire next.

Used for the recipe's cron jobs (checked here, run by the image's cron) and for `schedules:` in
sandbox.yaml (run by `sandbox serve`). Fields: minute, hour, day of month, month (1-12 or jan-dec),
day of week (0-7 or sun-sat, 0 and 7 are Sunday); each a list of `*`, `N`, `A-B`, `*/S`, `A-B/S`;
or one of @yearly @annually @monthly @weekly @daily @midnight @hourly. As in Vixie cron, when both
day fields are restricted a day matching either fires. Times are UTC, minute resolution.
No dependency (croniter) for this: the grammar is small, and its errors must read like the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
RANGES: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "minute": (0, 59, ()),
    "hour": (0, 23, ()),
    "day": (1, 31, ()),
    "month": (1, 12, _MONTHS),
    "weekday": (0, 7, _DAYS),
}
HINT = "cron syntax: *, 5, 1-5, */15, 0-30/5, 1,15 (month jan..dec, weekday sun..sat)"
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAYS_IN = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February at its longest
_HORIZON_DAYS = 366 * 9  # any expression that fires at all fires within 8 years (a Feb 29)


class CronError(ValueError):
    """A malformed or never-firing cron expression; the message says which field and why."""


def parse_field(field: str, value: str) -> frozenset[int]:
    """The values `value` selects in `field` (weekday 7 counted as 0); ValueError says why not."""
    lo, hi, names = RANGES[field]

    def number(tok: str) -> int:
        if re.fullmatch(r"[0-9]{1,9}", tok):
            n = int(tok)
        elif tok.lower() in names:
            n = names.index(tok.lower()) + (1 if field == "month" else 0)
        else:
            raise ValueError(f"{tok!r} is not a number")
        if not lo <= n <= hi:
            raise ValueError(f"{n} is out of range {lo}-{hi}")
        return n

    out: set[int] = set()
    for part in value.split(","):
        rng, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not re.fullmatch(r"[0-9]{1,9}", step_text) or int(step_text) == 0:
                raise ValueError(f"step {step_text!r} must be a positive number")
            step = int(step_text)
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            first, last = rng.split("-", 1)
            a, b = number(first), number(last)
            if a > b:
                raise ValueError(f"range {rng!r} is reversed")
        else:
            a = b = number(rng)
            if slash:
                raise ValueError("a step needs '*' or a range, e.g. */5 or 0-30/5")
        out.update(range(a, b + 1, step))
    if field == "weekday" and 7 in out:
        out = (out - {7}) | {0}
    return frozenset(out)


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the sets of each field and whether the day fields are restricted."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # the day-of-month field starts with '*'
    any_weekday: bool

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom, dow = d.day in self.days, (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    def matches(self, t: datetime) -> bool:
        t = t.astimezone(UTC)
        return t.minute in self.minutes and t.hour in self.hours and self.day_matches(t.date())

    def next_after(self, t: datetime) -> datetime:
        """The first time after `t` (strictly, at a whole minute, UTC) that the expression fires."""
        start = t.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.date()
        for _ in range(_HORIZON_DAYS):
            if self.day_matches(day):
                h0, m0 = (start.hour, start.minute) if day == start.date() else (0, 0)
                for h in self.hours:
                    for m in self.minutes:
                        if (h, m) >= (h0, m0):
                            return datetime(day.year, day.month, day.day, h, m, tzinfo=UTC)
            day += timedelta(days=1)
        raise CronError(f"{self.text!r} never fires")

    def fired_between(self, since: datetime, until: datetime) -> bool:
        """Whether it fires in (since, until]: a scheduler that last looked at `since` runs it now."""
        return self.next_after(since) <= until.astimezone(UTC)


def parse_cron(text: object) -> Cron:
    """A checked cron expression; CronError names the field and what is wrong with it."""
    if not isinstance(text, str) or not text.strip() or len(text) > 200:
        raise CronError(f"a cron expression must be a non-empty string of at most 200 characters ({HINT})")
    expr = MACROS.get(text.strip(), text.strip())
    if expr.startswith("@"):
        raise CronError(f"unknown macro {expr!r}: one of {', '.join(MACROS)} (@reboot means nothing here)")
    parts = expr.split()
    if len(parts) != 5:
        raise CronError(
            f"{text!r} has {len(parts)} fields, a cron expression has 5: minute hour day month weekday"
        )
    sets = {}
    for field, value in zip(RANGES, parts, strict=True):
        try:
            sets[field] = parse_field(field, value)
        except ValueError as e:
            raise CronError(f"invalid {field} {value!r}: {e} ({HINT})") from e
    cron = Cron(
        text=text,
        minutes=tuple(sorted(sets["minute"])),
        hours=tuple(sorted(sets["hour"])),
        days=sets["day"],
        months=sets["month"],
        weekdays=sets["weekday"],
        any_day=parts[2].startswith("*"),
        any_weekday=parts[4].startswith("*"),
    )
    if cron.any_weekday and not any(d <= _DAYS_IN[m - 1] for m in cron.months for d in cron.days):
        raise CronError(f"{text!r} never fires: no month of it has such a day")
    return cron
