"""A transmitter's position on WGS-84 from pairwise TDOAs, with an honest uncertainty.

Owns the geometry (geodetic <-> ECEF, local east/north metres), the coarse likelihood
grid that starts the fit (three receivers can have two solutions: the grid finds the
global minimum instead of the nearest local one), the weighted nonlinear least squares
(scipy), outlier-pair rejection, and the 95 % error ellipse and GDOP from the
covariance. The emitter is on the ellipsoid at a given altitude (2-D fit); the
propagation speed is a parameter (LF ground waves are a little slower than c).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, stats

from tasks.errors import RfAcquisitionError
from tasks.geodesy import SPEED_OF_LIGHT, ecef, horizontal_distance_m, metres_per_degree

CHI2_2D_95 = float(stats.chi2.ppf(0.95, 2))


@dataclass(frozen=True)
class Site:
    name: str
    latitude: float
    longitude: float
    altitude_m: float = 0.0


@dataclass(frozen=True)
class Tdoa:
    """Arrival time at ``a`` minus arrival time at ``b`` (s) and its standard error."""

    a: str
    b: str
    tdoa_s: float
    stderr_s: float
    dof: int | None = None  # degrees of freedom of stderr_s (segments - 1), None: known


@dataclass
class Position:
    latitude: float
    longitude: float
    ellipse_major_m: float
    ellipse_minor_m: float
    ellipse_orientation_deg: float
    gdop: float
    residual_rms_ns: float
    chi2: float
    pairs_used: list[Tdoa]
    pairs_rejected: list[tuple[Tdoa, str]]
    receivers_used: list[str]
    residuals_ns: dict[str, float]
    covariance_en_m2: np.ndarray
    grid: Grid | None = None
    notes: list[str] = field(default_factory=list)
    # other positions that fit the TDOAs about as well (three receivers: two hyperbola
    # intersections), (lat, lon, chi2)
    alternatives: list[tuple[float, float, float]] = field(default_factory=list)
    # the ellipse's Mahalanobis level: chi2(2) at 95 %, or 2 F(2, dof) at 95 % when the
    # TDOA errors are themselves estimated from a few segments
    ellipse_level: float = CHI2_2D_95


@dataclass
class Grid:
    """The coarse likelihood map: cost (weighted chi2) on a lat/lon grid."""

    latitudes: np.ndarray
    longitudes: np.ndarray
    chi2: np.ndarray  # (lat, lon)


class GeolocationError(RfAcquisitionError, ValueError):
    """Too few usable pairs or receivers to fix a position."""


def _model(
    lat: np.ndarray, lon: np.ndarray, alt: float, sites: dict[str, np.ndarray], pairs, speed
) -> np.ndarray:
    p = ecef(lat, lon, alt)
    dist = {name: np.linalg.norm(p - xyz, axis=-1) for name, xyz in sites.items()}
    return np.stack([(dist[t.a] - dist[t.b]) / speed for t in pairs], axis=-1)


def locate(
    sites: Sequence[Site],
    tdoas: Sequence[Tdoa],
    *,
    speed_m_s: float = SPEED_OF_LIGHT,
    emitter_altitude_m: float = 0.0,
    grid_points: int = 161,
    margin_m: float | None = None,
    max_outlier_rounds: int = 3,
    outlier_p: float = 1e-3,
) -> Position:
    """Weighted least-squares position of the emitter from pairwise TDOAs.

    Covariance: the fit weights pairs as independent, but pairs sharing a receiver share
    its errors (only N-1 of the pairs are independent): the covariance is the sandwich
    with the pairs' modelled covariance (:func:`pair_covariance`), inflated when the
    residuals' chi2 exceeds what that covariance predicts.
    """
    if not (math.isfinite(speed_m_s) and 1e8 <= speed_m_s <= 3.1e8):
        raise ValueError(f"speed_m_s={speed_m_s} is out of range [1e8, 3.1e8] m/s")
    by_name = {s.name: s for s in sites}
    pairs = [t for t in tdoas if t.a in by_name and t.b in by_name]
    _check_enough(pairs)
    rejected: list[tuple[Tdoa, str]] = []
    xyz = {n: ecef(s.latitude, s.longitude, s.altitude_m) for n, s in by_name.items()}
    grid = _grid(by_name, xyz, pairs, speed_m_s, emitter_altitude_m, grid_points, margin_m)
    for _ in range(max_outlier_rounds + 1):
        lat, lon, res, chi2, alternatives = _fit(
            xyz, pairs, speed_m_s, emitter_altitude_m, grid, by_name
        )
        n_rx = len(_receivers(pairs))
        dof = max(n_rx - 1 - 2, 0)
        if dof == 0:
            break
        _, _, expected = _covariance(lat, lon, xyz, pairs, speed_m_s, emitter_altitude_m)
        # chi2 of correlated pairs, rescaled to the independent (N-3)-dof distribution
        eff_chi2 = chi2 * dof / expected if expected > 0 else chi2
        if stats.chi2.sf(eff_chi2, dof) >= outlier_p:
            break
        if len(pairs) <= 3 or n_rx <= 3:
            break
        worst = int(np.argmax(np.abs(res / [t.stderr_s for t in pairs])))
        candidate = pairs[:worst] + pairs[worst + 1 :]
        if len(_receivers(candidate)) < 3:
            break
        rejected.append(
            (pairs[worst], f"outlier: residual {res[worst] * 1e9:.0f} ns, chi2 {chi2:.1f}")
        )
        pairs = candidate
        grid = _grid(by_name, xyz, pairs, speed_m_s, emitter_altitude_m, grid_points, margin_m)
    receivers = _receivers(pairs)
    cov, gdop, expected_chi2 = _covariance(lat, lon, xyz, pairs, speed_m_s, emitter_altitude_m)
    if len(receivers) > 3 and expected_chi2 > 0:
        # residuals larger than the pairs' errors explain: the errors were understated.
        # With three receivers the pairs hold only two independent differences, which a
        # 2-D position fits exactly: the residuals carry no information about the errors
        # (their expected chi2 is ~0), so nothing is rescaled.
        cov = cov * max(1.0, chi2 / expected_chi2)
    dofs = [t.dof for t in pairs if t.dof]
    level = 2.0 * float(stats.f.ppf(0.95, 2, float(np.median(dofs)))) if dofs else CHI2_2D_95
    major, minor, orient = error_ellipse(cov, level)
    rms = float(np.sqrt(np.mean(res**2))) * 1e9
    notes = [
        f"ambiguous: {la:.5f}, {lo:.5f} fits as well (chi2 {c:.1f} vs {chi2:.1f}); "
        "more receivers would decide"
        for la, lo, c in alternatives
    ]
    return Position(
        latitude=lat,
        longitude=lon,
        ellipse_major_m=major,
        ellipse_minor_m=minor,
        ellipse_orientation_deg=orient,
        gdop=gdop,
        residual_rms_ns=rms,
        chi2=chi2,
        pairs_used=pairs,
        pairs_rejected=rejected,
        receivers_used=receivers,
        residuals_ns={f"{t.a}-{t.b}": float(r * 1e9) for t, r in zip(pairs, res, strict=True)},
        covariance_en_m2=cov,
        grid=grid,
        notes=notes,
        alternatives=alternatives,
        ellipse_level=level,
    )


def _receivers(pairs: Sequence[Tdoa]) -> list[str]:
    return sorted({t.a for t in pairs} | {t.b for t in pairs})


def _check_enough(pairs: Sequence[Tdoa]) -> None:
    n_rx = len(_receivers(pairs))
    if len(pairs) < 2 or n_rx < 3:
        raise GeolocationError(
            f"need TDOAs from at least 3 receivers (2 pairs) for a 2-D position, got "
            f"{len(pairs)} pair(s) over {n_rx} receiver(s)"
        )


def _grid(by_name, xyz, pairs, speed, alt, points, margin_m) -> Grid:
    lats = np.array([s.latitude for s in by_name.values()])
    lons = np.array([s.longitude for s in by_name.values()])
    lat0 = float(lats.mean())
    m_lat, m_lon = metres_per_degree(lat0)
    extent = max((lats.max() - lats.min()) * m_lat, (lons.max() - lons.min()) * m_lon, 10_000.0)
    margin = margin_m if margin_m is not None else max(100_000.0, extent)
    glat = np.linspace(lats.min() - margin / m_lat, lats.max() + margin / m_lat, points)
    glon = np.linspace(lons.min() - margin / m_lon, lons.max() + margin / m_lon, points)
    glat = np.clip(glat, -89.9, 89.9)
    la, lo = np.meshgrid(glat, glon, indexing="ij")
    pred = _model(la, lo, alt, xyz, pairs, speed)
    meas = np.array([t.tdoa_s for t in pairs])
    sig = np.array([t.stderr_s for t in pairs])
    # grid cells are coarse: add the TDOA change across a cell to the error so the true
    # cell is not missed between two narrow hyperbolae
    cell = max(glat[1] - glat[0], 0) * m_lat + max(glon[1] - glon[0], 0) * m_lon
    sig_eff = np.sqrt(sig**2 + (cell / speed) ** 2)
    chi2 = np.sum(((pred - meas) / sig_eff) ** 2, axis=-1)
    return Grid(glat, glon, chi2)


def _fit(xyz, pairs, speed, alt, grid: Grid, by_name) -> tuple[Any, ...]:
    meas = np.array([t.tdoa_s for t in pairs])
    sig = np.array([t.stderr_s for t in pairs])
    lat_ref = float(np.mean([s.latitude for s in by_name.values()]))
    m_lat, m_lon = metres_per_degree(lat_ref)

    def residuals(x: np.ndarray) -> np.ndarray:
        pred = _model(np.array(x[0]), np.array(x[1]), alt, xyz, pairs, speed)
        return (pred - meas) / sig

    lat_span = (grid.latitudes[0], grid.latitudes[-1])
    lon_span = (grid.longitudes[0], grid.longitudes[-1])

    def in_area(la: float, lo: float) -> bool:
        lo = (lo + 180.0) % 360.0 - 180.0
        return bool(lat_span[0] <= la <= lat_span[1] and lon_span[0] <= lo <= lon_span[1])

    found = []
    for la, lo in _grid_minima(grid, 6):
        sol = optimize.least_squares(
            residuals,
            x0=[la, lo],
            x_scale=[1000.0 / m_lat, 1000.0 / m_lon],
            method="lm",
            xtol=1e-12,
            ftol=1e-12,
        )
        found.append((sol, float(np.sum(sol.fun**2))))
    # Hyperbolae on a sphere meet twice: with three receivers the far-side mirror fits as
    # exactly as the true point, and an unbounded fit from a grid start can slide there.
    # A solution inside the searched area always wins over one outside it.
    inside = [f for f in found if in_area(float(f[0].x[0]), float(f[0].x[1]))]
    sol, cost = min(inside or found, key=lambda f: f[1])
    lat, lon = float(sol.x[0]), float(sol.x[1])
    res = sol.fun * sig
    alternatives: list[tuple[float, float, float]] = []
    for other, c in found:
        la, lo = float(other.x[0]), float(other.x[1])
        fits = c <= cost + max(4.0, 0.5 * cost)
        new = all(horizontal_distance_m(la, lo, a, b) > 1_000.0 for a, b, _ in alternatives)
        if in_area(la, lo) and fits and new and horizontal_distance_m(lat, lon, la, lo) > 1_000.0:
            alternatives.append((la, lo, c))
    return lat, (lon + 180.0) % 360.0 - 180.0, res, cost, alternatives


def _grid_minima(grid: Grid, count: int) -> list[tuple[float, float]]:
    """The lowest local minima of the grid cost (distinct basins), best first."""
    c = grid.chi2
    padded = np.pad(c, 1, constant_values=np.inf)
    is_min = np.ones_like(c, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_min &= c <= padded[1 + di : 1 + di + c.shape[0], 1 + dj : 1 + dj + c.shape[1]]
    idx = np.argwhere(is_min)
    order = np.argsort(c[is_min])
    out = [(float(grid.latitudes[i]), float(grid.longitudes[j])) for i, j in idx[order][:count]]
    if not out:
        i, j = np.unravel_index(int(np.argmin(c)), c.shape)
        out = [(float(grid.latitudes[i]), float(grid.longitudes[j]))]
    return out


def _covariance(lat, lon, xyz, pairs, speed, alt) -> tuple[np.ndarray, float, float]:
    """Position covariance in (east, north) m^2, the GDOP of the geometry, and the chi2
    the residuals should have under the pairs' covariance."""
    m_lat, m_lon = metres_per_degree(lat)
    d = 1.0  # metre steps for the numerical Jacobian
    base = _model(np.array(lat), np.array(lon), alt, xyz, pairs, speed)
    de = _model(np.array(lat), np.array(lon + d / m_lon), alt, xyz, pairs, speed) - base
    dn = _model(np.array(lat + d / m_lat), np.array(lon), alt, xyz, pairs, speed) - base
    jac = np.stack([de, dn], axis=-1) / d  # s per metre
    sig = np.array([t.stderr_s for t in pairs])
    w = np.diag(1.0 / sig**2)
    bread = np.linalg.inv(jac.T @ w @ jac)
    c = pair_covariance(pairs)
    # The fit weights pairs as independent; pairs sharing a receiver share its noise, so
    # the estimate's covariance is the sandwich with the pairs' modelled covariance.
    cov = bread @ jac.T @ w @ c @ w @ jac @ bread
    hat = np.eye(len(pairs)) - jac @ bread @ jac.T @ w
    expected_chi2 = float(np.trace(w @ hat @ c @ hat.T))
    h = jac * speed  # range difference per metre: dimensionless
    gdop = float(np.sqrt(np.trace(np.linalg.inv(h.T @ h))))
    return cov, gdop, expected_chi2


def pair_covariance(pairs: Sequence[Tdoa]) -> np.ndarray:
    """Covariance of pairwise TDOAs that share receivers.

    Each pair's variance is split into per-receiver parts (s_a^2 + s_b^2, non-negative
    least squares over all pairs); pairs sharing a receiver covary by +-its part.
    """
    names = _receivers(pairs)
    index = {n: i for i, n in enumerate(names)}
    sig2 = np.array([t.stderr_s**2 for t in pairs])
    sign = np.zeros((len(pairs), len(names)))
    for k, t in enumerate(pairs):
        sign[k, index[t.a]] = 1.0
        sign[k, index[t.b]] = -1.0
    scale = float(sig2.max())
    parts, _ = optimize.nnls(np.abs(sign), sig2 / scale)
    c = (sign * parts * scale) @ sign.T
    # what the per-receiver parts leave of each pair's own variance is the pair's own
    # (positive semi-definite by construction)
    c += np.diag(np.clip(sig2 - np.diag(c), 0.0, None))
    return c


def error_ellipse(cov_en: np.ndarray, chi2_level: float = CHI2_2D_95) -> tuple[float, float, float]:
    """(major, minor semi-axes m, orientation of the major axis deg clockwise from north)."""
    vals, vecs = np.linalg.eigh(cov_en)
    k = math.sqrt(chi2_level)
    major = k * math.sqrt(max(vals[1], 0.0))
    minor = k * math.sqrt(max(vals[0], 0.0))
    e, n = vecs[0, 1], vecs[1, 1]
    orient = math.degrees(math.atan2(e, n)) % 180.0
    return major, minor, orient


def inside_ellipse(position: Position, lat: float, lon: float) -> bool:
    """Whether (lat, lon) lies inside the 95 % ellipse of ``position``."""
    m_lat, m_lon = metres_per_degree(position.latitude)
    d = np.array([(lon - position.longitude) * m_lon, (lat - position.latitude) * m_lat])
    return float(d @ np.linalg.inv(position.covariance_en_m2) @ d) <= position.ellipse_level
