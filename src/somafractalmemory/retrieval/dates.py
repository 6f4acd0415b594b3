"""Dates a query names, as time windows: "on 13 October 2023", "in July 2023", "in June",
"during 2023", "2023-10-13". Pure: no Django, no I/O; English month names.

Ranking favours the memories whose event time falls in a window the query names
(`ranking.credit`). Only absolute dates are read: a query has no time of its own to count
"last year" from.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MONTHS = {m.lower(): n for n, m in enumerate(calendar.month_name) if m}
_MONTHS |= {m.lower(): n for n, m in enumerate(calendar.month_abbr) if m}
_MONTH = r"(?P<{}>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY_MONTH_YEAR = re.compile(
    r"\b(?P<d>\d{1,2})(?:st|nd|rd|th)?\s+" + _MONTH.format("m") + r",?\s+(?P<y>\d{4})\b", re.I
)
_MONTH_DAY_YEAR = re.compile(
    r"\b" + _MONTH.format("m") + r"\s+(?P<d>\d{1,2})(?:st|nd|rd|th)?,?\s+(?P<y>\d{4})\b", re.I
)
_ISO = re.compile(r"\b(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})\b")
_MONTH_YEAR = re.compile(r"\b" + _MONTH.format("m") + r",?\s+(?P<y>\d{4})\b", re.I)
_MONTH_ALONE = re.compile(r"\b(?:in|during|of|since|until)\s+" + _MONTH.format("m") + r"\b", re.I)
_YEAR = re.compile(r"\b(?:in|during|of|since|until)\s+(?P<y>\d{4})\b", re.I)


@dataclass(frozen=True)
class Window:
    """[start, end) in UTC; or, for a month named without a year, that month of any year."""

    start: datetime | None = None
    end: datetime | None = None
    month: int | None = None

    def holds(self, moment: datetime) -> bool:
        if self.month is not None:
            return moment.month == self.month
        assert self.start is not None and self.end is not None
        return self.start <= moment < self.end


def _month(name: str) -> int:
    return _MONTHS[name.lower().rstrip(".")]


def _day(year: int, month: int, day: int) -> Window | None:
    try:
        start = datetime(year, month, day, tzinfo=UTC)
    except ValueError:  # 31 June, month 13
        return None
    return Window(start, start + timedelta(days=1))


def windows(text: str) -> list[Window]:
    """The time windows `text` names, the most precise kind found: days, else months of a
    year, else months and years."""
    days = [
        _day(int(m["y"]), _month(m["m"]), int(m["d"]))
        for pattern in (_DAY_MONTH_YEAR, _MONTH_DAY_YEAR)
        for m in pattern.finditer(text)
    ]
    days += [_day(int(m["y"]), int(m["m"]), int(m["d"])) for m in _ISO.finditer(text)]
    if found := [w for w in days if w is not None]:
        return found
    months = []
    for m in _MONTH_YEAR.finditer(text):
        year, month = int(m["y"]), _month(m["m"])
        if 1 <= year <= 9998:
            end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            months.append(Window(datetime(year, month, 1, tzinfo=UTC), end))
    if months:
        return months
    loose = [Window(month=_month(m["m"])) for m in _MONTH_ALONE.finditer(text)]
    for m in _YEAR.finditer(text):
        year = int(m["y"])
        if 1 <= year <= 9998:
            loose.append(
                Window(datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC))
            )
    return loose
