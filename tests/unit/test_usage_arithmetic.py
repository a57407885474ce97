"""The arithmetic of usage that needs no database: calendar buckets and the runway."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from skill_credits.usage.service import bucket_start, buckets, runway_of

NOW = datetime(2026, 12, 7, 20, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end", "interval", "count"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC), "hour", 744),
        (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, 0, 0, 1, tzinfo=UTC), "hour", 745),
        (
            datetime(2026, 3, 1, 10, 30, tzinfo=UTC),
            datetime(2026, 3, 1, 10, 50, tzinfo=UTC),
            "hour",
            1,
        ),
        (datetime(2026, 3, 1, 23, tzinfo=UTC), datetime(2026, 3, 2, 1, tzinfo=UTC), "day", 2),
        (datetime(2025, 12, 31, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC), "month", 2),
        # an offset: the buckets are UTC's (01:00+02:00 is 23:00 the day before)
        (
            datetime.fromisoformat("2026-03-02T01:00:00+02:00"),
            datetime(2026, 3, 2, 1, tzinfo=UTC),
            "day",
            2,
        ),
    ],
)
def test_buckets_are_the_utc_calendar_intervals_the_range_touches(start, end, interval, count):
    assert buckets(start, end, interval) == count
    assert bucket_start(start, interval).tzinfo == UTC


def test_the_runway_is_available_over_burn_and_none_without_burn() -> None:
    assert runway_of(100, 5.0, NOW) == (20.0, NOW + timedelta(days=20))
    assert runway_of(100, 0.0, NOW) == (None, None)
    assert runway_of(100, -2.0, NOW) == (None, None)  # more refunded than consumed
    days, when = runway_of(10**15, 1 / 7, NOW)  # past the year 9999: no date
    assert days == pytest.approx(7 * 10**15) and when is None
