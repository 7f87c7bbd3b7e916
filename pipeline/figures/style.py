"""Shared look of every figure: an Agg canvas without pyplot, readable font sizes, the Dynamic World colours.

The class colours are the Dynamic World V1 palette of :data:`pipeline.bands.DW_PALETTE` (the one place
they are defined); this module only turns them into matplotlib objects (a lookup table, a colour map,
legend handles). Figures are built on a :class:`matplotlib.figure.Figure` with its own Agg canvas, so
rendering never touches pyplot's global backend (safe in the CLI, in workers and in tests), and are
saved without ``bbox_inches="tight"``: a PNG is exactly ``figsize × dpi`` pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bands import DW_CLASSES, DW_PALETTE, LABEL_NODATA

#: Colour of label pixels without a class (clouds, shadows, outside the product) in label maps.
NODATA_COLOUR = "#ffffff"
#: Default resolution of saved PNGs (the committed figures are small).
DEFAULT_DPI = 90

#: Font sizes (points) used by every figure; at 90 dpi 9 pt is about 11 px, readable in a README.
STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
#: Size (points) of numbers written inside plots (bar labels, matrix cells).
ANNOTATION_SIZE = 8


def styled(build: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run a figure builder under :data:`STYLE` (text objects take the sizes when created)."""
    import matplotlib

    @functools.wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(STYLE):
            return build(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float):
    """An empty constrained-layout figure of ``width × height`` inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` as a PNG of exactly ``figsize × dpi`` pixels (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def hex_to_rgb(colour: str) -> tuple[float, float, float]:
    """``"#419bdf"`` → ``(0.255, 0.608, 0.875)``."""
    c = colour.lstrip("#")
    return tuple(int(c[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def dw_lookup_table(nodata_colour: str = NODATA_COLOUR) -> np.ndarray:
    """``(256, 3)`` float RGB table indexed by a label-map value: the DW colours, ``nodata_colour``
    for :data:`~pipeline.bands.LABEL_NODATA` and mid grey for any other (invalid) value.
    """
    table = np.full((256, 3), 0.5)
    for k, colour in enumerate(DW_PALETTE):
        table[k] = hex_to_rgb(colour)
    table[LABEL_NODATA] = hex_to_rgb(nodata_colour)
    return table


def dw_colormap():
    """A :class:`~matplotlib.colors.ListedColormap` of the DW classes (use with ``vmin=-0.5, vmax=K-0.5``)."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(list(DW_PALETTE), name="dynamic_world")


def dw_legend_handles(classes: tuple[str, ...] | list[str] = DW_CLASSES, nodata: bool = False) -> list:
    """Legend patches for the DW classes (and a "no label" patch when ``nodata``)."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=DW_PALETTE[DW_CLASSES.index(c)], edgecolor="0.3", label=c.replace("_", " "))
               for c in classes]
    if nodata:
        handles.append(Patch(facecolor=NODATA_COLOUR, edgecolor="0.3", label="no label"))
    return handles


def pretty(name: str) -> str:
    """A class name for display: ``shrub_and_scrub`` → ``shrub and scrub``."""
    return name.replace("_", " ")


def show(fig, dpi: int = DEFAULT_DPI) -> None:
    """Show ``fig`` in a notebook as a PNG (it has no pyplot manager to show it); outside IPython, print
    its size instead (a notebook run as a script).
    """
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        get_ipython = None  # noqa: N806 - stands in for the IPython function
    if get_ipython is None or get_ipython() is None:
        w, h = fig.get_size_inches() * dpi
        print(f"[figure {int(round(w))}×{int(round(h))} px: {fig.texts[0].get_text() if fig.texts else ''}]")
        return
    display(Image(data=buf.getvalue(), format="png"))
