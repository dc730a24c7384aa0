"""The localization picture (PNG): receivers, likelihood map, estimate, 95 % ellipse, truth.

matplotlib with the Agg backend (no display); plain lat/lon axes with the longitude
scaled by cos(latitude) so ellipses keep their shape.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from tasks.geolocation import Position, Site, metres_per_degree


def map_png(
    sites: Sequence[Site],
    position: Position | None,
    *,
    truth: tuple[float, float] | None = None,
    title: str = "",
) -> bytes:
    """The map as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6), dpi=110)
    ax = fig.add_subplot()
    lat0 = float(np.mean([s.latitude for s in sites]))
    if position is not None and position.grid is not None:
        g = position.grid
        # relative likelihood exp(-chi2/2) on a log colour scale: where the fit looked
        rel = g.chi2 - np.nanmin(g.chi2)
        ax.pcolormesh(
            g.longitudes, g.latitudes, -np.clip(rel, 0, 200), shading="auto", cmap="viridis"
        )
    for s in sites:
        ax.plot(s.longitude, s.latitude, "^", color="white", mec="black", ms=9)
        ax.annotate(
            s.name,
            (s.longitude, s.latitude),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize=8,
            color="black",
            backgroundcolor=(1, 1, 1, 0.6),
        )
    if position is not None:
        ax.plot(
            position.longitude, position.latitude, "x", color="red", ms=12, mew=2, label="estimate"
        )
        m_lat, m_lon = metres_per_degree(position.latitude)
        a, b = position.ellipse_major_m, position.ellipse_minor_m
        th = math.radians(position.ellipse_orientation_deg)
        u = np.linspace(0, 2 * np.pi, 200)
        # major axis along bearing th (clockwise from north): east = sin, north = cos
        east = a * np.cos(u) * math.sin(th) + b * np.sin(u) * math.cos(th)
        north = a * np.cos(u) * math.cos(th) - b * np.sin(u) * math.sin(th)
        ax.plot(
            position.longitude + east / m_lon,
            position.latitude + north / m_lat,
            "r-",
            lw=1.5,
            label="95 % ellipse",
        )
    if truth is not None:
        ax.plot(truth[1], truth[0], "o", mfc="none", mec="orange", ms=12, mew=2, label="truth")
    ax.set_aspect(1.0 / math.cos(math.radians(lat0)))
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()
