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

    fig = Figure(figsize=(12, 5.5), dpi=100)
    overview = fig.add_subplot(1, 2, 1)
    zoom = fig.add_subplot(1, 2, 2)
    lat0 = float(np.mean([s.latitude for s in sites]))
    if position is not None and position.grid is not None:
        g = position.grid
        rel = g.chi2 - np.nanmin(g.chi2)  # -log likelihood (x2) relative to the best cell
        overview.pcolormesh(
            g.longitudes, g.latitudes, -np.clip(rel, 0, 200), shading="auto", cmap="viridis"
        )
    for ax in (overview, zoom):
        for s in sites:
            ax.plot(s.longitude, s.latitude, "^", color="white", mec="black", ms=9)
            ax.annotate(
                s.name,
                (s.longitude, s.latitude),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=8,
                backgroundcolor=(1, 1, 1, 0.6),
                annotation_clip=True,
            )
        if truth is not None:
            ax.plot(truth[1], truth[0], "o", mfc="none", mec="orange", ms=12, mew=2, label="truth")
    if position is not None:
        _estimate(overview, position)
        _estimate(zoom, position)
        _hyperbolae(zoom, sites, position, truth)
    overview.set_aspect(1.0 / math.cos(math.radians(lat0)))
    overview.set_title(title or "receivers and likelihood", fontsize=9)
    zoom.set_title("around the estimate: hyperbolae of the pairs used", fontsize=9)
    for ax in (overview, zoom):
        ax.set_xlabel("longitude (deg)")
        ax.set_ylabel("latitude (deg)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _estimate(ax, position: Position) -> None:
    ax.plot(position.longitude, position.latitude, "x", color="red", ms=12, mew=2, label="estimate")
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


def _hyperbolae(ax, sites, position: Position, truth) -> None:
    """Each used pair's measured TDOA as a line (where the model equals the measurement)."""
    from tasks.geodesy import SPEED_OF_LIGHT, ecef
    from tasks.geolocation import _model

    m_lat, m_lon = metres_per_degree(position.latitude)
    half = max(4.0 * position.ellipse_major_m, 2_000.0)
    if truth is not None:
        half = max(
            half,
            1.5
            * math.hypot(
                (truth[0] - position.latitude) * m_lat, (truth[1] - position.longitude) * m_lon
            ),
        )
    lats = position.latitude + np.linspace(-half, half, 160) / m_lat
    lons = position.longitude + np.linspace(-half, half, 160) / m_lon
    la, lo = np.meshgrid(lats, lons, indexing="ij")
    xyz = {s.name: ecef(s.latitude, s.longitude, s.altitude_m) for s in sites}
    pairs = position.pairs_used
    pred = _model(la, lo, 0.0, xyz, pairs, SPEED_OF_LIGHT)
    for k, t in enumerate(pairs):
        ax.contour(
            lons,
            lats,
            pred[..., k] - t.tdoa_s,
            levels=[0.0],
            colors="white",
            linewidths=0.6,
            alpha=0.8,
        )
    ax.set_xlim(lons[0], lons[-1])
    ax.set_ylim(lats[0], lats[-1])
    ax.set_facecolor("#30305a")
    ax.set_aspect(1.0 / math.cos(math.radians(position.latitude)))
