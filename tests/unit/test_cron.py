"""sandbox/config/cron.py: five-field cron expressions, their errors, and when they fire (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.config.cron import CronError, parse_cron


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_fields_ranges_steps_lists_and_names() -> None:
    c = parse_cron("0,30 9-17/4 * jan-mar,dec mon-fri")
    assert c.minutes == (0, 30) and c.hours == (9, 13, 17)
    assert c.months == frozenset({1, 2, 3, 12}) and c.weekdays == frozenset({1, 2, 3, 4, 5})
    assert parse_cron("*/15 * * * *").minutes == (0, 15, 30, 45)
    assert parse_cron("0 0 * * 7").weekdays == frozenset({0})  # 7 is Sunday too
    assert parse_cron("0 0 * * SUN").weekdays == frozenset({0})


@pytest.mark.parametrize(
    ("macro", "same"),
    [("@daily", "0 0 * * *"), ("@hourly", "0 * * * *"), ("@weekly", "0 0 * * 0"), ("@yearly", "0 0 1 1 *")],
)
def test_macros(macro: str, same: str) -> None:
    a, b = parse_cron(macro), parse_cron(same)
    assert (a.minutes, a.hours, a.days, a.months, a.weekdays) == (
        b.minutes,
        b.hours,
        b.days,
        b.months,
        b.weekdays,
    )


def test_next_after_is_strictly_later_and_on_the_minute() -> None:
    nightly = parse_cron("30 2 * * *")
    assert nightly.next_after(at(2024, 5, 1, 1, 0)) == at(2024, 5, 1, 2, 30)
    assert nightly.next_after(at(2024, 5, 1, 2, 30)) == at(2024, 5, 2, 2, 30)
    assert nightly.next_after(at(2024, 5, 1, 2, 29, 59)) == at(2024, 5, 1, 2, 30)
    assert parse_cron("* * * * *").next_after(at(2024, 12, 31, 23, 59, 30)) == at(2025, 1, 1, 0, 0)


def test_day_fields_restricted_both_mean_either() -> None:
    c = parse_cron("0 0 13 * fri")  # the 13th, and every Friday
    assert c.next_after(at(2024, 9, 1)) == at(2024, 9, 6)  # a Friday
    assert c.next_after(at(2024, 9, 7)) == at(2024, 9, 13)
    fridays = parse_cron("0 0 */1 * fri")  # '*' first in the day field: both must hold
    assert fridays.next_after(at(2024, 9, 7)) == at(2024, 9, 13)
    assert fridays.next_after(at(2024, 9, 13)) == at(2024, 9, 20)


def test_feb_29_waits_for_a_leap_year() -> None:
    assert parse_cron("0 12 29 2 *").next_after(at(2025, 3, 1)) == at(2028, 2, 29, 12, 0)


def test_fired_between_is_what_a_scheduler_asks() -> None:
    c = parse_cron("0 3 * * *")
    assert c.fired_between(at(2024, 5, 1, 2, 59), at(2024, 5, 1, 3, 0))
    assert not c.fired_between(at(2024, 5, 1, 3, 0), at(2024, 5, 2, 2, 59))
    assert c.matches(at(2024, 5, 1, 3, 0)) and not c.matches(at(2024, 5, 1, 3, 1))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "non-empty"),
        (None, "non-empty"),
        ("* * * *", "has 4 fields"),
        ("* * * * * *", "has 6 fields"),
        ("60 * * * *", "minute '60': 60 is out of range 0-59"),
        ("* 24 * * *", "out of range 0-23"),
        ("* * 0 * *", "out of range 1-31"),
        ("* * * 13 *", "out of range 1-12"),
        ("* * * * 8", "out of range 0-7"),
        ("5-1 * * * *", "reversed"),
        ("*/0 * * * *", "positive"),
        ("5/10 * * * *", "a step needs"),
        ("a * * * *", "not a number"),
        ("1,,2 * * * *", "not a number"),
        ("* * * foo *", "not a number"),
        ("@reboot", "unknown macro"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("* * * * *; rm -rf /", "fields"),
        ("x" * 300, "at most 200"),
    ],
)
def test_bad_expressions_say_what_is_wrong(text: object, words: str) -> None:
    with pytest.raises(CronError) as e:
        parse_cron(text)
    assert words in str(e.value)


@settings(max_examples=200, deadline=None)
@given(
    minute=st.sampled_from(["*", "0", "*/7", "5-50/5", "1,2,59"]),
    hour=st.sampled_from(["*", "0", "23", "1-5", "*/6"]),
    day=st.sampled_from(["*", "1", "15", "28-31", "*/10"]),
    month=st.sampled_from(["*", "2", "jan,jul", "*/3"]),
    weekday=st.sampled_from(["*", "0", "mon-fri", "6,7"]),
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)),
)
def test_next_after_matches_and_nothing_earlier_does(
    minute: str, hour: str, day: str, month: str, weekday: str, start: datetime
) -> None:
    c = parse_cron(f"{minute} {hour} {day} {month} {weekday}")
    t = start.replace(tzinfo=UTC)
    nxt = c.next_after(t)
    assert nxt > t and c.matches(nxt) and nxt.second == 0
    probe = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(200):  # the minutes just after t do not match, up to nxt
        if probe >= nxt:
            break
        assert not c.matches(probe)
        probe += timedelta(minutes=1)
