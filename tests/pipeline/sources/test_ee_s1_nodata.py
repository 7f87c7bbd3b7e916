"""Earth Engine source, offline: every Sentinel-1 no-data pixel comes back NaN, valid dB values unchanged.

The fake transport behaves like ``computePixels`` on a masked image: masked pixels hold whatever value
the request's ``unmask`` put there. The graph reader and fake transport are those of ``tests/ee_fakes.py``,
the ``ee_offline`` fixture that of ``tests/conftest.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ee")

from ee_fakes import (  # noqa: E402
    ALL,
    GRID,
    LOC,
    WINDOW,
    FakeTransport,
    calls,
    expected_pixels,
    graph,
    make_source,
)

from pipeline.sources import earthengine as eesrc

S1_BANDS = ALL["s1_grd"]


def s1_mask() -> np.ndarray:
    """Masked S1 pixels of the fake scene: a border strip (outside the swath) and scattered pixels."""
    r, c = np.mgrid[0:GRID.size, 0:GRID.size]
    return (c < 3) | ((r * 7 + c * 3) % 11 == 0)


class MaskedS1Transport(FakeTransport):
    """S1 pixels where :func:`s1_mask` is set are masked: served as the request's ``unmask`` value
    (0 when the request does not unmask, as a masked pixel of a NUMPY_NDARRAY answer). One valid
    pixel per band holds a genuine 0.0 dB.
    """

    def compute_pixels(self, request, tag):
        out = super().compute_pixels(request, tag)
        if tag != "s1_grd" or not isinstance(out, np.ndarray):
            return out
        unmask = calls(graph(request["expression"]), "Image.unmask")
        fill = unmask[-1]["value"]["value"] if unmask else 0.0
        g = request["grid"]
        row0 = round((GRID.y0 - g["affineTransform"]["translateY"]) / GRID.resolution)
        mask = s1_mask()[row0:row0 + out.shape[0]]
        for band in request["bandIds"]:
            values = out[band]
            if row0 == 0:
                values[5, 10] = 0.0  # a real 0 dB backscatter (bright target), not no-data
            values[mask] = fill
        return out


def served_s1() -> np.ndarray:
    data = expected_pixels("s1_grd", S1_BANDS).copy()
    data[:, 5, 10] = 0.0
    return data


@pytest.mark.usefixtures("ee_offline")
def test_s1_masked_pixels_are_nan_and_valid_ones_unchanged():
    sample = make_source(MaskedS1Transport()).fetch(LOC, WINDOW, GRID, ALL)
    data = sample.images["s1_grd"].data
    mask = s1_mask()
    assert data.dtype == np.float32 and data.shape == (len(S1_BANDS), GRID.size, GRID.size)
    assert np.isnan(data[:, mask]).all()  # every no-data pixel, in every band
    np.testing.assert_array_equal(data[:, ~mask], served_s1()[:, ~mask])  # valid ones bit for bit
    assert (data[:, 5, 10] == 0.0).all()  # a real 0 dB stays 0 dB
    # S2 is untouched by the S1 rule: its no-data stays 0 DN, its pixels as served
    np.testing.assert_array_equal(sample.images["s2_l1c"].data, expected_pixels("s2_l1c", ALL["s2_l1c"]))


@pytest.mark.usefixtures("ee_offline")
def test_s1_nodata_also_in_row_strips():
    """Requests split into row strips (a small request budget) give the same NaN pattern."""
    cap = eesrc.NPY_HEADER_MARGIN + 7 * GRID.size * 4  # 7 rows of one float32 band per request
    fake = MaskedS1Transport()
    data = make_source(fake, max_request_bytes=cap).fetch(LOC, WINDOW, GRID, {"s1_grd": S1_BANDS}).images["s1_grd"].data
    assert fake.count("s1_grd", "pixels") > 2
    mask = s1_mask()
    assert np.isnan(data[:, mask]).all()
    np.testing.assert_array_equal(data[:, ~mask], served_s1()[:, ~mask])


@pytest.mark.usefixtures("ee_offline")
def test_s1_request_unmasks_to_an_impossible_db_value():
    tree = graph(eesrc.pixel_image("s1_grd", "S1_ID", S1_BANDS, 10.0))
    (unmask,) = calls(tree, "Image.unmask")
    value = unmask["value"]["value"]
    smallest_db = 10 * np.log10(np.finfo(np.float32).smallest_subnormal)
    assert value == eesrc.S1_NODATA_DB and value < eesrc.S1_FLOOR_DB < smallest_db
    assert unmask["sameFootprint"] is False  # pixels outside the scene footprint are no-data too
    assert tree["fn"] == "Image.toFloat"


def test_s1_nodata_to_nan_rule():
    values = np.array([[eesrc.S1_NODATA_DB, -499.0, -600.0, 0.0], [-15.5, np.inf, -np.inf, 3.25]], np.float32)
    out = eesrc.s1_nodata_to_nan(values.copy())
    np.testing.assert_array_equal(np.isnan(out), [[True, False, True, False], [False, True, True, False]])
    assert out[0, 1] == -499.0 and out[0, 3] == 0.0 and out[1, 0] == -15.5 and out[1, 3] == 3.25
