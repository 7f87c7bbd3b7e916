"""Which SSL4EO-S12 acquisition of a location belongs to which season: a one-to-one optimal assignment.

Our rule. SSL4EO-S12 stores up to four acquisitions per location and
modality, searched independently per seasonal window, and does not record which window each came
from. The reader knows the season reference dates (``reference_dates``, the manifest's
``seasons.reference_dates``; by default SSL4EO-S12's own 2021-03-20, 2021-06-21, 2021-09-22,
2020-12-21, in the manifest's order) and assigns the acquisition folders of one location and
modality to the seasons **one-to-one**, so that the total distance between the acquisitions and the
reference dates of their seasons is smallest (an optimal assignment, solved with
``scipy.optimize.linear_sum_assignment`` on the acquisitions × seasons distance matrix):

* distance = days between the acquisition date (UTC) and the nearest anniversary of the reference
  date, i.e. a cyclic day-of-year distance (0–183 days) that ignores the years. Our choice: the
  released data were searched around one shifted copy of the reference dates per location, so the
  acquisition year says nothing about the season (a 2020-01-05 scene is near the 12-21 season);
* one-to-one and minimal in total (our choice, instead of each acquisition to its nearest date):
  SSL4EO-S12 shifts all four search dates of a location by one random offset, so a location's images
  are about three months apart but may lie half-way between two reference dates (e.g. Feb 3, May 5,
  Aug 6, Nov 6). Nearest-date-per-image can then put two images into one season and leave another
  empty, failing a valid location; the optimal one-to-one assignment keeps the images in time order,
  rotated onto the seasons they are closest to as a whole (Feb 3 → 12-21, May 5 → 03-20, …);
* more acquisitions than seasons: each season still gets one, and the acquisitions left over are
  not used; fewer: the seasons left without one raise :class:`NoImageFound` naming the location
  folder;
* ties (our rule, deterministic): among the assignments of equal minimal total, the earliest
  acquisition (time order, then folder name) gets the first-listed season it can have in such an
  assignment, then the next acquisition, and so on; an acquisition is left unused only when no
  season is left for it in such an assignment (so, of equally near competitors, the earlier is used).
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.sources.ssl4eo_local.layout import acquisition_time

#: SSL4EO-S12's season reference dates (its downloader's search dates), in the manifest's default order.
SSL4EO_REFERENCE_DATES: tuple[dt.date, ...] = (
    dt.date(2021, 3, 20), dt.date(2021, 6, 21), dt.date(2021, 9, 22), dt.date(2020, 12, 21),
)


def cyclic_day_distance(day: dt.date, reference: dt.date) -> int:
    """Days from ``day`` to the nearest anniversary of ``reference`` (0–183; the years are ignored).

    The anniversary of 29 February in a non-leap year is 28 February.
    """
    distances = []
    for year in (day.year - 1, day.year, day.year + 1):
        if reference.month == 2 and reference.day == 29 and not calendar.isleap(year):
            anniversary = dt.date(year, 2, 28)
        else:
            anniversary = reference.replace(year=year)
        distances.append(abs((day - anniversary).days))
    return min(distances)


def season_distances(times: Sequence[dt.datetime], reference_dates: Sequence[dt.date]) -> np.ndarray:
    """Acquisitions × seasons matrix of :func:`cyclic_day_distance` (days, int64) of the UTC dates."""
    dist = np.zeros((len(times), len(reference_dates)), dtype=np.int64)
    for i, when in enumerate(times):
        for j, ref in enumerate(reference_dates):
            dist[i, j] = cyclic_day_distance(when.date(), ref)
    return dist


def _min_total(dist: np.ndarray, rows: list[int], cols: list[int]) -> int:
    """Smallest total of a one-to-one assignment of ``rows`` to ``cols`` (min(len) pairs; 0 if none)."""
    if not rows or not cols:
        return 0
    sub = dist[np.ix_(rows, cols)]
    r, c = linear_sum_assignment(sub)
    return int(sub[r, c].sum())


def optimal_assignment(dist: np.ndarray) -> dict[int, int]:
    """Column (season) → row (acquisition) of a one-to-one assignment of minimal total ``dist``.

    ``min(rows, columns)`` pairs. Rows are taken to be in time order, columns in the listed order.
    Ties (our rule): rows are fixed one after the other, each to the first column, else to "unused",
    that still allows an assignment of the minimal total and full size (checked by solving the rest
    with ``linear_sum_assignment``); the result is thus the lexicographically first optimal one.
    """
    n_rows, n_cols = dist.shape
    n_pairs = min(n_rows, n_cols)
    best = _min_total(dist, list(range(n_rows)), list(range(n_cols)))
    chosen: dict[int, int] = {}
    fixed_total = 0
    free_cols = list(range(n_cols))
    for row in range(n_rows):
        later_rows = list(range(row + 1, n_rows))
        options: list[int | None] = [*free_cols, None]  # None: this acquisition is not used
        picked = False
        for col in options:
            cols_left = [c for c in free_cols if c != col]
            size = len(chosen) + (col is not None) + min(len(later_rows), len(cols_left))
            if size != n_pairs:
                continue
            cost = 0 if col is None else int(dist[row, col])
            if fixed_total + cost + _min_total(dist, later_rows, cols_left) == best:
                if col is not None:
                    chosen[col] = row
                    fixed_total += cost
                    free_cols.remove(col)
                picked = True
                break
        if not picked:  # cannot happen: some option always extends to an optimal assignment
            raise AssertionError(f"no optimal assignment found for row {row} of {dist.tolist()}")
    return chosen


def assign_seasons(folders: list[Path], reference_dates: Sequence[dt.date]) -> dict[int, Path]:
    """Season index → acquisition folder, one-to-one with minimal total distance (see the module docstring).

    The folders are put in time order (then folder name), the distances are
    :func:`cyclic_day_distance` and ties follow :func:`optimal_assignment`. Seasons left without an
    acquisition (fewer folders than seasons) are absent from the result; surplus folders are unused.
    """
    keyed = sorted(((acquisition_time(f), f.name, f) for f in folders), key=lambda t: (t[0], t[1]))
    ordered = [f for _, _, f in keyed]
    dist = season_distances([t for t, _, _ in keyed], reference_dates)
    return {season: ordered[row] for season, row in sorted(optimal_assignment(dist).items())}
