"""Turning the loosely typed values of a legacy SQLite file into what the tenant schema accepts.

Every function is pure and answers ``(value, problem)``: ``problem`` is None when the value was taken
(possibly cleaned), else a short text saying why it was not (the caller reports it and stores NULL or a
fallback). What is decided here:

- **Conditions** follow the usual grading scale: ``Mint``/``MT``/``Gem Mint`` -> mint, ``NM``/``near
  mint`` -> near_mint, ``EX``/``Excellent`` -> excellent, ``VG`` -> very_good, ``G``/``GD`` -> good,
  ``F``/``FR`` -> fair, ``P``/``PR`` -> poor, case, spaces, dots, hyphens and underscores ignored.
  A combined grade between two grades (``EX-MT``, ``NM-MT``, ``VG-EX``, ``EX/NM``) is ambiguous: it is
  taken as the **lower** of the two (``EX-MT`` -> excellent), because a collection must never claim a
  better condition than the card has, and reported as rounded down. Anything else is NULL, reported.
- **Years** are four-digit 1860-2100 (integers, or text/real that is exactly such a number); two-digit
  years ('96'), '1996a', '' and out-of-range values are NULL, reported.
- **Roles**: admin -> tenant_admin, editor -> collection_manager, user (or none) -> user; anything else
  -> user, reported (never more rights than the file says).
- **Dates**: ISO 8601 in any of its forms, SQLite's ``YYYY-MM-DD HH:MM:SS`` (UTC, like everything
  naive here), Unix seconds or milliseconds, ``DD.MM.YYYY``, ``Mar 4, 2019`` / ``4 March 2019``, and
  ``A/B/YYYY`` only when one of A, B is above 12 (else day and month cannot be told apart: reported).
- **Text**: NUL characters (PostgreSQL text cannot hold them) are removed, reported; optional text that
  is blank becomes NULL.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from controlplane.cards.models import Condition

MIN_YEAR, MAX_YEAR = 1860, 2100

_GRADES: dict[str, Condition] = {
    **dict.fromkeys(("mint", "mt", "m", "gem mint", "gem mt", "gem", "gm mt", "gem m"), Condition.MINT),
    **dict.fromkeys(("near mint", "nearmint", "nm", "n mint"), Condition.NEAR_MINT),
    **dict.fromkeys(("excellent", "ex", "exc", "excel", "xl"), Condition.EXCELLENT),
    **dict.fromkeys(("very good", "verygood", "vg", "v good"), Condition.VERY_GOOD),
    **dict.fromkeys(("good", "g", "gd"), Condition.GOOD),
    **dict.fromkeys(("fair", "f", "fr"), Condition.FAIR),
    **dict.fromkeys(("poor", "p", "pr"), Condition.POOR),
}
#: Best first, as ``Condition`` is ordered.
_RANK = {condition: rank for rank, condition in enumerate(Condition)}
_SEPARATORS = re.compile(r"[\s._]+")
#: How a combined grade is written: ``EX-MT``, ``EX/NM``, ``NM+MT``, else ``EX MT``.
_SPLITTERS = (re.compile(r"\s*[-/+]\s*"), re.compile(r"\s+"))


def condition(raw: object) -> tuple[str | None, str | None, bool]:
    """``(condition, problem, rounded_down)`` of a legacy condition; blank or NULL is no condition."""
    if raw is None:
        return None, None, False
    text = _SEPARATORS.sub(" ", str(raw).strip().lower()).strip()
    if not text:
        return None, None, False
    whole = _GRADES.get(text.replace("-", " ").strip())
    if whole is not None:  # "near-mint", "Gem-MT": one grade, however written
        return whole.value, None, False
    for splitter in _SPLITTERS:
        parts = [part for part in splitter.split(text) if part]
        if len(parts) != 2:
            continue
        first, second = _GRADES.get(parts[0]), _GRADES.get(parts[1])
        if first is None or second is None:
            continue
        lower = max(first, second, key=_RANK.__getitem__)
        if first == second:
            return lower.value, None, False
        return lower.value, f"between {first.value} and {second.value}: taken as the lower, {lower.value}", True
    return None, "not a condition on the grading scale", False


def year(raw: object) -> tuple[int | None, str | None]:
    """``(year, problem)``: a year 1860-2100, or None (NULL: no problem; anything else: reported)."""
    if raw is None:
        return None, None
    value: int | None = None
    if isinstance(raw, bool):
        value = None
    elif isinstance(raw, int):
        value = raw
    elif isinstance(raw, float):
        value = int(raw) if math.isfinite(raw) and raw.is_integer() else None
    elif isinstance(raw, str):
        text = raw.strip()
        if re.fullmatch(r"\d{4}(\.0+)?", text):
            value = int(text.split(".")[0])
        else:
            return None, "not a four-digit year" if text else "empty"
    if value is None:
        return None, "not a year"
    if 0 <= value < 100:
        return None, "a two-digit year: the century is unknown"
    if not MIN_YEAR <= value <= MAX_YEAR:
        return None, f"outside {MIN_YEAR}-{MAX_YEAR}"
    return value, None


#: Legacy role -> tenant role.
ROLES = {"admin": "tenant_admin", "administrator": "tenant_admin", "editor": "collection_manager", "user": "user"}
_ROLE_RANK = {"user": 0, "collection_manager": 1, "tenant_admin": 2}


def role(raw: object) -> tuple[str, str | None]:
    """``(tenant role, problem)``; an unknown role is ``user`` (never more than the file grants)."""
    text = "" if raw is None else str(raw).strip().lower()
    if not text:
        return "user", None
    mapped = ROLES.get(text)
    if mapped is None:
        return "user", "unknown role: imported as user"
    return mapped, None


def higher_role(a: str, b: str) -> str:
    return a if _ROLE_RANK[a] >= _ROLE_RANK[b] else b


_BCRYPT = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def password_kind(raw: object) -> str:
    """``bcrypt`` (kept, verified at sign-in), ``sha256`` or ``unknown`` (both need a new password)."""
    text = raw.strip() if isinstance(raw, str) else ""
    if _BCRYPT.match(text):
        return "bcrypt"
    if _SHA256.match(text):
        return "sha256"
    return "unknown"


def text(raw: object) -> tuple[str | None, bool]:
    """``(text, cleaned)``: the value as text with NUL characters removed (``cleaned``: some were)."""
    if raw is None:
        return None, False
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    value = str(raw)
    if "\x00" in value:
        return value.replace("\x00", ""), True
    return value, False


def optional(value: str | None) -> str | None:
    """Stripped text, or None when blank."""
    if value is None:
        return None
    stripped = value.strip()
    return stripped or None


def ref_id(raw: object) -> int | None:
    """An id as the legacy file stores it (an integer, or text/real holding one); None if it is none."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return int(raw) if math.isfinite(raw) and raw.is_integer() else None
    if isinstance(raw, str) and re.fullmatch(r"\s*-?\d{1,19}\s*", raw):
        return int(raw)
    return None


_EPOCH_MAX = 4_102_444_800  # 2100-01-01, in seconds
_TEXT_FORMATS = ("%b %d, %Y", "%B %d, %Y", "%d %b %Y", "%d %B %Y", "%b %d %Y", "%B %d %Y")
_SLASHED = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
_DOTTED = re.compile(r"^(\d{1,2})\.(\d{1,2})\.(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")


def timestamp(raw: object) -> tuple[datetime | None, str | None]:
    """``(moment in UTC, problem)``; NULL or blank is ``(None, None)``, unreadable ``(None, why)``."""
    if raw is None or isinstance(raw, bool):
        return None, None
    if isinstance(raw, int | float):
        return _epoch(float(raw))
    value = str(raw).strip()
    if not value:
        return None, None
    if re.fullmatch(r"\d{9,13}(\.\d+)?", value):
        return _epoch(float(value))
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        parsed = None
    if parsed is not None:
        return _utc(parsed), None
    for pattern, day_first in ((_DOTTED, True), (_SLASHED, None)):
        match = pattern.match(value)
        if match:
            return _numeric_date(match, day_first)
    for fmt in _TEXT_FORMATS:
        try:
            return _utc(datetime.strptime(value, fmt)), None
        except ValueError:
            continue
    return None, "not a date in a known format"


def _epoch(seconds: float) -> tuple[datetime | None, str | None]:
    if not math.isfinite(seconds) or seconds <= 0:
        return None, "not a date"
    if seconds > _EPOCH_MAX:
        seconds /= 1000.0  # milliseconds
    if not 0 < seconds <= _EPOCH_MAX:
        return None, "a timestamp outside 1970-2100"
    return datetime.fromtimestamp(seconds, UTC), None


def _numeric_date(match: re.Match[str], day_first: bool | None) -> tuple[datetime | None, str | None]:
    a, b, y = int(match.group(1)), int(match.group(2)), int(match.group(3))
    if day_first is None:
        if a > 12 >= b:
            day_first = True
        elif b > 12 >= a:
            day_first = False
        elif a == b:
            day_first = True
        else:
            return None, "day and month cannot be told apart"
    day, month = (a, b) if day_first else (b, a)
    hour, minute, second = (int(match.group(i) or 0) for i in (4, 5, 6))
    try:
        return datetime(y, month, day, hour, minute, second, tzinfo=UTC), None
    except ValueError:
        return None, "not a valid date"


def _utc(moment: datetime) -> datetime:
    """Naive moments are UTC (SQLite's CURRENT_TIMESTAMP is)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
