"""The aggregate page's timeline picture, laid out for an SVG.

Time runs across on a labelled axis (UTC); each collection has a lane with a mark
per version, and each watcher a lane with a mark per receipt, joined by a line to
the version it acted on. Marks never cover each other: marks of one lane closer
than a mark's width are stacked in rows, so versions committed in the same second
(a batch, or `manage.py demo`) stay one mark each. This module only computes
coordinates and words; templates/dashboard/partials/picture.html draws them.
"""

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aggregates.models import Receipt, Version

WIDTH = 640  # the viewBox; CSS scales it to the page
# Half a tick label either side, at the font size a phone needs (the picture is
# drawn 0.57 times its size at 390 px, and botlnek.css enlarges its text there).
LEFT = RIGHT = 40
LANE_NAME = 17  # a lane's name sits above its marks
TOP = 4
RADIUS = 5  # a version's mark; a receipt's is as wide
# Around each mark, what a tap finds: 48 units are 27 px where the picture is
# drawn at a phone's width (0.56 of its size), over the 24 px a finger needs.
HIT_RADIUS = 24
GAP = 2 * RADIUS + 3  # closer than this, two marks of a lane go on separate rows
ROW = 14  # between the rows of a lane
LANE_PAD = 7
AXIS = 48  # below the lanes: tick marks, times, dates
LABEL_CHARS = 40
# Less than this and everything is "at once": centre it in a window this wide.
NARROWEST = timedelta(seconds=60)
MOST_TICKS = 5
STEPS = [
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    2 * 3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    2 * 86400,
    7 * 86400,
    14 * 86400,
    30 * 86400,
    91 * 86400,
    182 * 86400,
    365 * 86400,
]
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()  # noqa: SIM905
FAILED = {Receipt.Outcome.FAILURE, Receipt.Outcome.TIMEOUT}


@dataclass
class _Lane:
    name: str
    kind: str  # "collection" or "watcher"
    items: list[dict] = field(default_factory=list)
    rows: int = 1
    top: float = 0


def picture(
    versions: list[Version],
    collections: list[str],
    deadlines: list[tuple[str, datetime]] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """The picture of `versions` (each with its `receipt_list`), a lane for each
    of `collections` (in that order; empty when none of them came) and for each
    watcher that left a receipt, and each rule's deadline (rule, moment) on the
    axis."""
    if not versions:
        return {"width": WIDTH, "height": 0, "marks": []}
    receipts = [r for version in versions for r in version.receipt_list]
    start, end = _window(
        [v.at for v in versions]
        + [r.at for r in receipts]
        + [moment for _, moment in deadlines]
    )
    scale = (WIDTH - LEFT - RIGHT) / (end - start).total_seconds()

    def x_of(moment: datetime) -> float:
        return round(LEFT + (moment - start).total_seconds() * scale, 1)

    names = list(collections)
    names += sorted({v.source.collection for v in versions} - set(names))
    lanes = {name: _Lane(name, "collection") for name in names}
    watchers = {w: _Lane(w, "watcher") for w in sorted({r.watcher for r in receipts})}
    for version in sorted(versions, key=lambda v: (v.at, v.number)):
        lanes[version.source.collection].items.append(
            _version_mark(version, x_of(version.at))
        )
    for receipt in sorted(receipts, key=lambda r: (r.at, r.id or 0)):
        watchers[receipt.watcher].items.append(_receipt_mark(receipt, x_of(receipt.at)))
    every_lane = list(lanes.values()) + list(watchers.values())
    bottom = _stack(every_lane)

    marks = [item for lane in lanes.values() for item in lane.items]
    receipt_marks = [item for lane in watchers.values() for item in lane.items]
    by_number = {mark["version"]: mark for mark in marks}
    watchers_top = next(
        (lane.top for lane in every_lane if lane.kind == "watcher"), bottom
    )
    for mark in receipt_marks:
        target = by_number.get(mark["version"])
        if target is not None:
            # Up to the rule between the lanes, along it, then up to the version:
            # the join runs through no other mark of the lanes it crosses at
            # neither end (a straight line would cut through them).
            mark["link"] = (
                f"M{mark['x']},{mark['y']}V{watchers_top}H{target['x']}V{target['y']}"
            )
    axis_y = bottom + 2
    return {
        "width": WIDTH,
        "height": axis_y + AXIS,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "axis_y": axis_y,
        "tick_end": axis_y + 5,
        "first": min(v.number for v in versions),
        "last": max(v.number for v in versions),
        "lanes": [_lane_json(lane) for lane in every_lane],
        "watchers_top": watchers_top if watchers else None,
        "ticks": _ticks(start, end, x_of, axis_y),
        "marks": sorted(marks, key=lambda mark: mark["version"]),
        "receipts": receipt_marks,
        "deadlines": [
            {
                "x": x_of(moment),
                # The label on the side of the line with room for it.
                "anchor": "end" if x_of(moment) > WIDTH / 2 else "start",
                "label_x": x_of(moment) + (-4 if x_of(moment) > WIDTH / 2 else 4),
                "rule": rule,
                "title": f"deadline of rule {rule}: {_moment(moment)} UTC",
            }
            for rule, moment in deadlines
        ],
        "hit": HIT_RADIUS,
        "description": _description(versions, receipts, names),
    }


def _window(moments: list[datetime]) -> tuple[datetime, datetime]:
    """The span the axis shows: all of `moments`, with a margin."""
    first, last = min(moments), max(moments)
    if last - first < NARROWEST:
        middle = first + (last - first) / 2
        return middle - NARROWEST / 2, middle + NARROWEST / 2
    margin = (last - first) * 0.04
    return first - margin, last + margin


def _version_mark(version: Version, x: float) -> dict:
    keys = " ".join(f"{k}={v}" for k, v in sorted(version.source.keys.items()))
    return {
        "x": x,
        "version": version.number,
        "collection": version.source.collection,
        "title": (
            f"v{version.number} · {version.source.collection}"
            f"{' ' + keys if keys else ''} · {_moment(version.at)} UTC"
        ),
    }


def _receipt_mark(receipt: Receipt, x: float) -> dict:
    how = receipt.outcome
    if receipt.exit_code is not None:
        how += f", exit {receipt.exit_code}"
    if receipt.duration_s is not None:
        how += f", {receipt.duration_s:.1f} s"
    return {
        "x": x,
        "version": receipt.version,
        "watcher": receipt.watcher,
        "outcome": receipt.outcome,
        "failed": receipt.outcome in FAILED,
        "link": None,  # the path to the version's mark, once laid out
        "title": (
            f"{receipt.watcher} ran on v{receipt.version}: {how} · "
            f"{_moment(receipt.at)} UTC"
        ),
    }


def _stack(lanes: list[_Lane]) -> float:
    """Give each mark a row of its lane and a y, each lane a top; answer the
    bottom. In a row, marks are at least GAP apart, so none covers another."""
    top = TOP
    for lane in lanes:
        ends: list[float] = []  # the x of each row's last mark
        for item in lane.items:
            free = (i for i, end in enumerate(ends) if item["x"] - end >= GAP)
            row = next(free, None)
            if row is None:
                row = len(ends)
                ends.append(item["x"])
            ends[row] = item["x"]
            item["row"] = row
        lane.rows = max(len(ends), 1)
        lane.top = top
        for item in lane.items:
            item["y"] = top + LANE_NAME + RADIUS + item["row"] * ROW
        top += LANE_NAME + LANE_PAD + 2 * RADIUS + (lane.rows - 1) * ROW
    return top


def _lane_json(lane: _Lane) -> dict:
    label = lane.name
    if len(label) > LABEL_CHARS:
        label = label[: LABEL_CHARS - 1] + "…"
    if lane.kind == "collection" and not lane.items:
        label += " — none yet"
    return {
        "name": lane.name,
        "label": label,
        "kind": lane.kind,
        "top": lane.top,
        "label_y": lane.top + 14,
    }


def _ticks(start: datetime, end: datetime, x_of, axis_y: float) -> list[dict]:
    """Ticks on round moments (UTC): a time under each, and the date under the
    first and wherever the day changes; days themselves once ticks are days."""
    span = (end - start).total_seconds()
    step = next((s for s in STEPS if span / s <= MOST_TICKS), None)
    if step is None:
        step = 365 * 86400 * math.ceil(span / (365 * 86400 * MOST_TICKS))
    first = math.ceil(start.timestamp() / step) * step
    ticks = []
    previous = None
    moment_s = first
    while moment_s <= end.timestamp():
        moment = datetime.fromtimestamp(moment_s, UTC)
        if step >= 86400:
            label, under = _day(moment), ""
            if previous is None or previous.year != moment.year:
                under = str(moment.year)
        else:
            label = moment.strftime("%H:%M:%S" if step < 60 else "%H:%M")
            under = ""
            if previous is None or previous.date() != moment.date():
                under = _day(moment)
        if previous is None:
            under += " · UTC"
        x = x_of(moment)
        # The line under is longer ("Nov 30 · UTC"): kept inside the picture.
        half = len(under) * 6
        under_x, under_anchor = x, "middle"
        if x - half < 0:
            under_x, under_anchor = 4, "start"
        elif x + half > WIDTH:
            under_x, under_anchor = WIDTH - 4, "end"
        ticks.append(
            {
                "x": x,
                "label": label,
                "under": under,
                "under_x": under_x,
                "under_anchor": under_anchor,
                "label_y": axis_y + 20,
                "under_y": axis_y + 40,
            }
        )
        previous = moment
        moment_s += step
    return ticks


def _day(moment: datetime) -> str:
    return f"{MONTHS[moment.month - 1]} {moment.day}"


def _moment(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _description(
    versions: list[Version], receipts: list[Receipt], names: list[str]
) -> str:
    """The picture in words, for those who cannot see it."""
    numbers = [v.number for v in versions]
    per_lane = {name: 0 for name in names}
    for version in versions:
        per_lane[version.source.collection] += 1
    counts = ", ".join(f"{name} {count}" for name, count in per_lane.items() if count)
    first, last = min(v.at for v in versions), max(v.at for v in versions)
    when = f"from {_moment(first)} to {_moment(last)} UTC"
    if _moment(first) == _moment(last):
        when = f"all at {_moment(first)} UTC"
    text = f"Versions {min(numbers)} to {max(numbers)} by collection: {counts}; {when}."
    if receipts:
        failed = sum(1 for r in receipts if r.outcome in FAILED)
        text += f" Receipts: {len(receipts) - failed} ok, {failed} failed or timed out."
    return text + " The table below lists every version and receipt."
