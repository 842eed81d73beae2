"""The arithmetic of keys' dates (aggregates/keydates.py): reading a key's date,
its neighbours at an offset, and the windows references cover."""

import importlib
from datetime import UTC, datetime, timedelta

import pytest

from aggregates.keydates import (
    DAY,
    MINUTE,
    SECOND,
    TEMPLATE_MARK,
    key_date,
    key_moment,
    neighbour,
    window,
)
from tests.toolkit import fill

DAYS = timedelta(days=1)
HOURS = timedelta(hours=1)
MINUTES = timedelta(minutes=1)
SECONDS = timedelta(seconds=1)


@pytest.mark.parametrize(
    ("key", "template", "shape", "at"),
    [
        ("2026-11-26", "\x00", DAY, datetime(2026, 11, 26, tzinfo=UTC)),
        ("2026-11-26Z", "\x00", DAY + "Z", datetime(2026, 11, 26, tzinfo=UTC)),
        ("run-2026-11-26", "run-\x00", DAY, datetime(2026, 11, 26, tzinfo=UTC)),
        ("2026-11-26/eu", "\x00/eu", DAY, datetime(2026, 11, 26, tzinfo=UTC)),
        (
            "d:2026-11-26T05:00Z",
            "d:\x00",
            MINUTE + "Z",
            datetime(2026, 11, 26, 5, tzinfo=UTC),
        ),
        ("2026-11-26T05:07", "\x00", MINUTE, datetime(2026, 11, 26, 5, 7, tzinfo=UTC)),
        (
            "x2026-11-26T05:07:09Zy",
            "x\x00y",
            SECOND + "Z",
            datetime(2026, 11, 26, 5, 7, 9, tzinfo=UTC),
        ),
        # An invalid date is skipped for the next valid one.
        ("bad-2026-13-40-good-2026-11-27", "bad-2026-13-40-good-\x00", DAY, None),
        ("leap-2028-02-29", "leap-\x00", DAY, datetime(2028, 2, 29, tzinfo=UTC)),
    ],
)
def test_a_keys_date_its_template_and_shape(key, template, shape, at):
    found = key_date(key)
    assert found is not None
    assert (found.template, found.shape) == (
        template.replace("\x00", TEMPLATE_MARK),
        shape,
    )
    if at is not None:
        assert found.at == at
    assert found.write(found.at) == key  # written back in the same shape


@pytest.mark.parametrize(
    "key",
    [
        "no-date",
        "20261-11-26",  # part of a longer number
        "2026-11-261",
        "2027-02-29",  # not a leap year
        "2026-02-30",
        "2026-00-10",
        "2026-11-26T25:00",  # an invalid time makes the whole date invalid
        "",
    ],
)
def test_keys_without_a_valid_date_have_none(key):
    assert key_date(key) is None
    assert key_moment(key) is None
    assert neighbour(key, -DAYS) is None
    assert window(key, -DAYS, 0 * DAYS) is None


@pytest.mark.parametrize(
    ("key", "offset", "expected"),
    [
        ("2026-11-26", -DAYS, "2026-11-25"),
        ("2026-11-26", 0 * DAYS, "2026-11-26"),
        ("2026-11-26", 6 * DAYS, "2026-12-02"),
        # Month and year ends, leap days.
        ("2026-03-01", -DAYS, "2026-02-28"),
        ("2028-03-01", -DAYS, "2028-02-29"),
        ("2028-02-28", DAYS, "2028-02-29"),
        ("2026-12-31", DAYS, "2027-01-01"),
        ("2027-01-01", -DAYS, "2026-12-31"),
        ("2026-01-31", 30 * DAYS, "2026-03-02"),
        # Prefixes and suffixes stay; only the date's text changes.
        ("run-2026-11-26/eu", -DAYS, "run-2026-11-25/eu"),
        ("2025-01-01-v2026-11-26", -DAYS, "2024-12-31-v2026-11-26"),
        # Hours and minutes, in the key's own shape.
        ("2026-11-26T05:00Z", -HOURS, "2026-11-26T04:00Z"),
        ("2026-11-26T00:30", -HOURS, "2026-11-25T23:30"),
        ("2026-11-26T05:00", -DAYS, "2026-11-25T05:00"),
        ("2026-11-26T05:00:30Z", -SECONDS, "2026-11-26T05:00:29Z"),
        ("2026-12-31T23:59:59", SECONDS, "2027-01-01T00:00:00"),
        ("2026-11-26Z", -DAYS, "2026-11-25Z"),
    ],
)
def test_neighbours_are_the_date_shifted_in_the_same_shape(key, offset, expected):
    assert neighbour(key, offset) == expected


@pytest.mark.parametrize(
    ("key", "offset"),
    [
        ("2026-11-26", -6 * HOURS),  # not a whole day: covers nothing
        ("2026-11-26T05:00", -30 * SECONDS),  # not a whole minute
        ("0001-01-01", -DAYS),  # before the first date there is
        ("9999-12-31", DAYS),  # after the last
        ("9999-12-31T23:59Z", 10_000 * 366 * DAYS),  # past what a date can hold
    ],
)
def test_a_neighbour_that_cannot_be_written_is_none(key, offset):
    assert neighbour(key, offset) is None


def test_a_window_is_a_date_range_of_the_same_template_and_shape():
    covers = window("run-2026-11-26", -2 * DAYS, 0 * DAYS)
    assert covers is not None
    inside = ["run-2026-11-24", "run-2026-11-25", "run-2026-11-26"]
    outside = [
        "run-2026-11-23",
        "run-2026-11-27",
        "run-2026-11-25T00:00",  # another shape
        "walk-2026-11-25",  # another template
        "run-2026-11-25Z",  # another shape (with Z)
        "no-date",
    ]
    assert [key for key in inside + outside if covers.covers(key_date(key))] == inside


def test_a_window_of_hours_covers_the_keys_between_its_bounds():
    covers = window("2026-11-26T05:00Z", -6 * HOURS, -HOURS)
    assert covers is not None
    assert covers.covers(key_date("2026-11-25T23:00Z"))
    assert covers.covers(key_date("2026-11-26T03:30Z"))  # any minute between
    assert not covers.covers(key_date("2026-11-26T04:01Z"))


def test_a_window_at_the_end_of_time_is_clipped_not_refused():
    covers = window("9999-12-30", -DAYS, 5 * DAYS)
    assert covers is not None
    assert covers.covers(key_date("9999-12-31"))
    assert not covers.covers(key_date("9999-12-28"))


# Stored with each aggregate, by both write paths and by the migration.


@pytest.fixture
def keyed(db):
    from aggregates import store

    store.create_domain("c-inputs", {})
    for key in ("run-2026-11-26", "2026-11-26T05:00Z", "no-date", "2026-13-40"):
        fill(key, 1)


def stored() -> dict:
    from aggregates.models import Aggregate

    return {
        key: (template, shape, at)
        for key, template, shape, at in Aggregate.objects.values_list(
            "key", "key_template", "key_shape", "key_at"
        )
    }


EXPECTED = {
    "run-2026-11-26": ("run-*", "day", datetime(2026, 11, 26, tzinfo=UTC)),
    "2026-11-26T05:00Z": ("*", "minuteZ", datetime(2026, 11, 26, 5, tzinfo=UTC)),
    "no-date": ("", "", None),
    "2026-13-40": ("", "", None),
}


def test_the_write_path_stores_each_aggregates_key_date(keyed):
    assert stored() == EXPECTED


def test_the_migration_fills_the_aggregates_made_before_it(keyed):
    from django.apps import apps

    from aggregates.models import Aggregate

    migration = importlib.import_module(
        "aggregates.migrations.0009_aggregate_key_dates"
    )
    Aggregate.objects.update(key_template="", key_shape="", key_at=None)
    migration.fill(apps, None)
    assert stored() == EXPECTED


def test_a_window_is_found_on_the_index(keyed):
    """What rules will ask: the aggregates of a template and shape in a range."""
    from aggregates.models import Aggregate

    fill("run-2026-11-25", 1)
    fill("run-2026-11-23", 1)
    covers = window("run-2026-11-26", -2 * DAYS, 0 * DAYS)
    found = Aggregate.objects.filter(
        key_template=covers.template,
        key_shape=covers.shape,
        key_at__range=(covers.first, covers.last),
    ).values_list("key", flat=True)
    assert sorted(found) == ["run-2026-11-25", "run-2026-11-26"]
