"""Durations ("90s", "1h30m") and sizes ("512M", "256MiB") as written in config files.

Durations: a whole or decimal number followed by a unit, several parts largest unit first
(`1h30m`, `1d12h`); units `w` `d` `h` `m` `s` `ms`. A bare number is seconds.

Sizes: a number with an optional unit. `K` `M` `G` `T` (also lowercase, or with `iB`: `MiB`) are
binary (1M = 1024 * 1024 bytes, as in lxc, cgroups and docker); `KB` `MB` `GB` `TB` are decimal
(1MB = 1000 * 1000 bytes); `B` or no unit is bytes.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

from sandbox.config.fields import fail

DURATION_UNITS: dict[str, float] = {
    "w": 604800.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
MAX_DURATION = 100 * 365 * 86400.0
DURATION_EXAMPLES = "e.g. 90s, 30m, 4h, 7d, 1h30m or 0.5s (units: w, d, h, m, s, ms)"

_KI, _MI, _GI, _TI = 1 << 10, 1 << 20, 1 << 30, 1 << 40
SIZE_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    **{u: _KI for u in ("K", "k", "KiB")},
    **{u: _MI for u in ("M", "m", "MiB")},
    **{u: _GI for u in ("G", "g", "GiB")},
    **{u: _TI for u in ("T", "t", "TiB")},
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
SIZE_EXAMPLES = "e.g. 512M, 1G, 256MiB or 1073741824 (bytes); K/M/G/T are binary, KB/MB/GB/TB decimal"

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|[wdhms])")
_SIZE = re.compile(rf"({_NUMBER})\s*([A-Za-z]*)")


def parse_duration(text: str) -> float:
    """'90s' -> 90.0, '1h30m' -> 5400.0, '0.5s' -> 0.5, '120' -> 120.0 (seconds)."""
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string like 90s, not {type(text).__name__}")
    s = text.strip()
    if re.fullmatch(_NUMBER, s):
        total = float(s)
    else:
        total, pos, seen = 0.0, 0, list(DURATION_UNITS)
        last = -1
        for match in _DURATION_PART.finditer(s):
            if match.start() != pos:
                break
            order = seen.index(match.group(2))
            if order <= last:
                raise ValueError(
                    f"invalid duration {text!r}: give each unit once, largest first ({DURATION_EXAMPLES})"
                )
            last, pos = order, match.end()
            total += float(match.group(1)) * DURATION_UNITS[match.group(2)]
        if not s or pos != len(s):
            raise ValueError(f"invalid duration {text!r}: expected a number and a unit, {DURATION_EXAMPLES}")
    if not math.isfinite(total) or total > MAX_DURATION:
        raise ValueError(f"duration {text!r} is too long (at most 100 years)")
    return total


def parse_size(text: str) -> int:
    """'512M' -> 536870912, '1G' -> 1073741824, '256MiB' -> 268435456, '1073741824' -> 1073741824."""
    if not isinstance(text, str):
        raise ValueError(f"a size must be a string like 512M, not {type(text).__name__}")
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid size {text!r}: expected a number and an optional unit, {SIZE_EXAMPLES}")
    number, unit = match.groups()
    if unit not in SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: unknown unit {unit!r}, {SIZE_EXAMPLES}")
    if "." not in number:
        return int(number) * SIZE_UNITS[unit]
    whole, frac = number.split(".")
    scale: int = 10 ** len(frac)
    scaled = (int(whole) * scale + int(frac)) * SIZE_UNITS[unit]
    if scaled % scale:
        raise ValueError(f"invalid size {text!r}: not a whole number of bytes")
    return scaled // scale


# --- pydantic types -----------------------------------------------------------------------------


def _duration(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        fail(f"expected a duration, got {value!r}", DURATION_EXAMPLES)
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0 or value > MAX_DURATION:
            fail(f"duration {value!r} must be a number of seconds between 0 and 100 years")
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            fail(str(exc))
    fail(
        f"expected a duration, got {'a mapping' if isinstance(value, dict) else 'a list'}", DURATION_EXAMPLES
    )


def _size(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        fail(f"expected a size, got {value!r}", SIZE_EXAMPLES)
    if isinstance(value, int):
        if value < 0:
            fail(f"size {value} must not be negative")
        return value
    if isinstance(value, float):
        fail(f"size {value!r} must be a whole number of bytes or a string like 512M", SIZE_EXAMPLES)
    if isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError as exc:
            fail(str(exc))
    fail(f"expected a size, got {'a mapping' if isinstance(value, dict) else 'a list'}", SIZE_EXAMPLES)


Duration = Annotated[float, BeforeValidator(_duration)]
"""A duration: a string like '90s' or '1h30m', or a number of seconds; stored as float seconds."""

Size = Annotated[int, BeforeValidator(_size)]
"""A size: a string like '512M' or '256MiB', or an integer number of bytes; stored as int bytes."""


def format_size(size: int) -> str:
    """536870912 -> '512M', 1000 -> '1000' (binary units when exact)."""
    for unit, factor in (("T", _TI), ("G", _GI), ("M", _MI), ("K", _KI)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
