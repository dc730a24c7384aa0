"""Position from TDOAs on WGS-84: exact recovery, honest 95 % ellipses, ambiguity, outliers."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.geolocation import (
    GeolocationError,
    Site,
    Tdoa,
    error_ellipse,
    horizontal_distance_m,
    inside_ellipse,
    locate,
)
from tasks.kiwisdr.emitter import SPEED_OF_LIGHT, ecef

SEED = [
    Site("aquila-di-giaveno", 45.02, 7.29, 600),
    Site("montanaro", 45.234, 7.857, 300),
    Site("torino", 45.044, 7.672, 250),
    Site("coazze", 45.03, 7.27, 700),
    Site("passo-del-giovi", 44.561, 8.956, 480),
    Site("genova", 44.395, 8.956, 100),
    Site("milano-baggio", 45.478, 9.123, 120),
]


def arrivals(sites: list[Site], lat: float, lon: float, alt: float = 0.0) -> dict[str, float]:
    p = ecef(lat, lon, alt)
    return {
        s.name: float(np.linalg.norm(p - ecef(s.latitude, s.longitude, s.altitude_m)))
        / SPEED_OF_LIGHT
        for s in sites
    }


def all_pairs(sites: list[Site], t: dict[str, float], sigma: float) -> list[Tdoa]:
    names = [s.name for s in sites]
    return [Tdoa(a, b, t[a] - t[b], sigma) for i, a in enumerate(names) for b in names[i + 1 :]]


def test_exact_tdoas_recover_the_position_within_a_metre() -> None:
    for lat, lon in [(44.9, 8.2), (45.3, 7.5), (44.6, 8.8)]:
        pos = locate(
            SEED, all_pairs(SEED, arrivals(SEED, lat, lon, 300.0), 50e-9), emitter_altitude_m=300.0
        )
        assert horizontal_distance_m(lat, lon, pos.latitude, pos.longitude) < 1.0
        assert pos.residual_rms_ns < 0.1
        assert len(pos.receivers_used) == 7 and len(pos.pairs_used) == 21
        assert 0 < pos.gdop < 10
        assert pos.ellipse_major_m >= pos.ellipse_minor_m > 0
        assert 0 <= pos.ellipse_orientation_deg < 180


def test_ellipse_covers_the_truth_at_its_stated_rate() -> None:
    """50 trials, arrival-time noise per receiver (so pairs sharing a receiver are
    correlated, as real pairwise TDOAs are): the truth is inside the 95 % ellipse in
    >= 90 % of trials, and the ellipse is not uselessly large (median area ratio)."""
    rng = np.random.default_rng(4)
    sigma = 100e-9  # per-pair TDOA standard error
    inside, errors, majors = [], [], []
    for _ in range(50):
        lat, lon = rng.uniform(44.6, 45.3), rng.uniform(7.4, 8.9)
        t = arrivals(SEED, lat, lon)
        noisy = {k: v + rng.normal(0, sigma / np.sqrt(2)) for k, v in t.items()}
        pos = locate(SEED, all_pairs(SEED, noisy, sigma))
        inside.append(inside_ellipse(pos, lat, lon))
        errors.append(horizontal_distance_m(lat, lon, pos.latitude, pos.longitude))
        majors.append(pos.ellipse_major_m)
    assert np.mean(inside) >= 0.90
    assert np.median(errors) < np.median(majors)
    assert np.median(majors) < 10 * np.median(errors)


def test_ambiguous_three_receivers_report_both_solutions() -> None:
    """Three receivers, an emitter where two hyperbola intersections fit exactly: the fit
    starts from the grid's minima, returns one and names the other as ambiguous."""
    sites = [Site("a", 45.0, 7.0), Site("b", 45.0, 8.0), Site("c", 45.8, 7.5)]
    truth = (44.1024, 6.0496)
    pos = locate(sites, all_pairs(sites, arrivals(sites, *truth), 10e-9))
    candidates = [(pos.latitude, pos.longitude)] + [(a, b) for a, b, _ in pos.alternatives]
    assert min(horizontal_distance_m(*truth, *c) for c in candidates) < 1.0
    assert pos.notes and "ambiguous" in pos.notes[0]


def test_three_receivers_a_centroid_start_would_miss() -> None:
    """Started from the receivers' centroid, least squares converges 31 km away from this
    emitter (the other intersection); starting from every grid basin finds the truth."""
    sites = [Site("a", 45.0, 7.0), Site("b", 45.0, 8.0), Site("c", 45.8, 7.5)]
    truth = (46.1579, 7.6244)
    pos = locate(sites, all_pairs(sites, arrivals(sites, *truth), 10e-9))
    candidates = [(pos.latitude, pos.longitude)] + [(a, b) for a, b, _ in pos.alternatives]
    assert min(horizontal_distance_m(*truth, *c) for c in candidates) < 1.0


def test_outlier_pair_is_rejected() -> None:
    t = arrivals(SEED, 44.95, 8.1)
    pairs = all_pairs(SEED, t, 50e-9)
    bad = pairs[3]
    pairs[3] = Tdoa(bad.a, bad.b, bad.tdoa_s + 20e-6, bad.stderr_s)  # 6 km of range error
    pos = locate(SEED, pairs)
    assert horizontal_distance_m(44.95, 8.1, pos.latitude, pos.longitude) < 5.0
    assert [f"{p.a}-{p.b}" for p, _ in pos.pairs_rejected] == [f"{bad.a}-{bad.b}"]
    assert len(pos.pairs_used) == 20


def test_propagation_speed_is_a_parameter() -> None:
    slow = SPEED_OF_LIGHT * 0.9997  # an LF ground wave is a little slower
    t = {k: v * SPEED_OF_LIGHT / slow for k, v in arrivals(SEED, 44.9, 8.2).items()}
    pos = locate(SEED, all_pairs(SEED, t, 50e-9), speed_m_s=slow)
    assert horizontal_distance_m(44.9, 8.2, pos.latitude, pos.longitude) < 1.0
    with pytest.raises(ValueError, match="speed_m_s"):
        locate(SEED, all_pairs(SEED, t, 50e-9), speed_m_s=3e9)


def test_too_few_receivers_is_a_clear_error() -> None:
    t = arrivals(SEED[:2], 44.9, 8.2)
    with pytest.raises(GeolocationError, match="at least 3 receivers"):
        locate(SEED[:2], all_pairs(SEED[:2], t, 50e-9))


def test_ellipse_orientation_is_clockwise_from_north() -> None:
    major, minor, orient = error_ellipse(np.diag([100.0**2, 10.0**2]))  # long east-west
    assert orient == pytest.approx(90.0)
    assert major == pytest.approx(100.0 * np.sqrt(-2 * np.log(0.05)))
    assert minor == pytest.approx(10.0 * np.sqrt(-2 * np.log(0.05)))
    _, _, orient = error_ellipse(np.array([[50.0, 49.0], [49.0, 50.0]]))  # north-east
    assert orient == pytest.approx(45.0)


def test_three_distant_receivers_never_slide_to_the_far_side_mirror() -> None:
    """Three receivers 300-800 km apart: the hyperbolae also meet on the far side of the
    Earth, exactly as well. The answer is the one inside the searched area whatever
    order the receivers and pairs come in (a real order once gave the antipode)."""
    import itertools

    lf = [
        Site("PA3ABC", 52.2215, 6.8937, 0.0),
        Site("F5XYZ", 47.3220, 5.0415, 0.0),
        Site("OE3KLU", 48.2082, 16.3738, 0.0),
    ]
    t = arrivals(lf, 50.0156, 9.0108)
    for order in itertools.permutations(lf):
        sites = list(order)
        pos = locate(sites, all_pairs(sites, t, 300e-9))
        assert horizontal_distance_m(50.0156, 9.0108, pos.latitude, pos.longitude) < 10.0, order


def test_three_receivers_get_an_ellipse_from_their_errors_not_from_zero_residuals() -> None:
    """Two independent differences fit a 2-D position exactly (residuals ~0, and so is
    their expected chi2): the ellipse comes from the pairs' errors, never from 0/0."""
    lf = [
        Site("PA3ABC", 52.2215, 6.8937, 0.0),
        Site("F5XYZ", 47.3220, 5.0415, 0.0),
        Site("OE3KLU", 48.2082, 16.3738, 0.0),
    ]
    t = arrivals(lf, 50.0156, 9.0108)
    pairs = all_pairs(lf, t, 1e-6)
    pairs[0] = Tdoa(pairs[0].a, pairs[0].b, pairs[0].tdoa_s + 1.5e-6, 1e-6)
    pos = locate(lf, pairs)
    # 1 us on 300-800 km baselines: a few hundred metres to a few km, never thousands of km
    assert 100.0 < pos.ellipse_major_m < 20_000.0
    assert horizontal_distance_m(50.0156, 9.0108, pos.latitude, pos.longitude) < 5_000.0
