"""Earth Engine test doubles shared by the tests of the Earth Engine source, its concurrency and the fetch
benchmark: graph inspection helpers and one location, grid, window and band set.

The ``ee_offline`` fixture (Earth Engine initialised without network) is in ``tests/conftest.py``.
"""

from __future__ import annotations

import datetime as dt
import json

from pipeline.bands import MODALITY_BANDS
from pipeline.grid import PatchGrid
from pipeline.locations import Location
from pipeline.seasons import SeasonWindow


def graph(obj) -> object:
    """The serialised computation of ``obj`` as nested dicts ``{"fn": name, arg: value, …}``."""
    data = json.loads(obj.serialize())
    values = data["values"]

    def node(v):
        if "valueReference" in v:
            return node(values[v["valueReference"]])
        if "constantValue" in v:
            return v["constantValue"]
        if "functionInvocationValue" in v:
            f = v["functionInvocationValue"]
            return {"fn": f["functionName"], **{k: node(a) for k, a in f.get("arguments", {}).items()}}
        if "arrayValue" in v:
            return [node(x) for x in v["arrayValue"]["values"]]
        if "dictionaryValue" in v:
            return {k: node(x) for k, x in v["dictionaryValue"]["values"].items()}
        if "functionDefinitionValue" in v:
            return {"fn": "<lambda>", "body": node(values[v["functionDefinitionValue"]["body"]])}
        return v

    return node(values[data["result"]])


def calls(tree, fn: str) -> list[dict]:
    """Every invocation of ``fn`` in a :func:`graph` tree."""
    found = []

    def walk(t):
        if isinstance(t, dict):
            if t.get("fn") == fn:
                found.append(t)
            for v in t.values():
                walk(v)
        elif isinstance(t, list):
            for v in t:
                walk(v)

    walk(tree)
    return found


LOC = Location(index=12, lon=11.58, lat=48.14, epsg=32632, x=691_600.0, y=5_335_300.0)
GRID = PatchGrid.for_location(LOC, size=24, resolution=10.0)
WINDOW = SeasonWindow(season=0, reference=dt.date(2021, 3, 20), start=dt.date(2021, 3, 5), end=dt.date(2021, 4, 4))
ALL = {name: bands for name, bands in MODALITY_BANDS.items()}
