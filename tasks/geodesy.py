"""WGS-84 geometry shared by the emitter model, the TDOA estimator and the solver.

One definition of the ellipsoid, so the simulator's geometric delays and the solver's
model of them can never disagree by a constant. Plain numpy, no Prefect.
"""

from __future__ import annotations

import math

import numpy as np

SPEED_OF_LIGHT = 299_792_458.0
WGS84_A = 6_378_137.0  # semi-major axis, m
WGS84_E2 = 6.694_379_990_14e-3  # first eccentricity squared


def ecef(
    lat_deg: float | np.ndarray, lon_deg: float | np.ndarray, alt_m: float | np.ndarray
) -> np.ndarray:
    """Geodetic to Earth-centred Cartesian metres: shape ``(3,)`` for scalars, ``(..., 3)``
    for arrays (a whole grid of candidate positions at once)."""
    lat, lon = np.radians(lat_deg), np.radians(lon_deg)
    n = WGS84_A / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)
    return np.stack(
        [
            (n + alt_m) * np.cos(lat) * np.cos(lon),
            (n + alt_m) * np.cos(lat) * np.sin(lon),
            (n * (1.0 - WGS84_E2) + alt_m) * np.sin(lat),
        ],
        axis=-1,
    )


def metres_per_degree(lat_deg: float) -> tuple[float, float]:
    """(north metres per degree latitude, east metres per degree longitude) on WGS-84."""
    lat = math.radians(lat_deg)
    s2 = math.sin(lat) ** 2
    m = WGS84_A * (1 - WGS84_E2) / (1 - WGS84_E2 * s2) ** 1.5
    n = WGS84_A / math.sqrt(1 - WGS84_E2 * s2)
    return m * math.pi / 180.0, n * math.cos(lat) * math.pi / 180.0


def horizontal_distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Straight-line distance between two points on the ellipsoid surface (fine < 1000 km)."""
    return float(np.linalg.norm(ecef(lat1, lon1, 0.0) - ecef(lat2, lon2, 0.0)))
