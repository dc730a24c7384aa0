"""The robust GPS timing fit, on stamps built exactly (integer ns) with every real defect."""

from __future__ import annotations

from fractions import Fraction

import pytest

from tasks.timing import (
    NS_PER_S,
    FrameStamp,
    TimingError,
    TimingModel,
    fit_timing,
    gps_stamp_to_utc_ns,
    ns_to_iso,
    sample_at,
    time_of_sample,
    utc_ns_to_gps_stamp,
)

N = 512
T0 = 1_795_000_000 * NS_PER_S + 123_456_789  # late 2026, an arbitrary ns
RATE = "12001.137"


def stamps(
    frames: int = 100,
    *,
    rate: str = RATE,
    t0: int = T0,
    fix_every: int = 28,
    first_zero: bool = True,
) -> list[FrameStamp]:
    """Exact stamps of a receiver whose sample n is taken at t0 + n / rate."""
    fs = Fraction(rate)
    out = []
    for k in range(frames):
        t = t0 + round(Fraction(k * N * NS_PER_S) / fs)
        sec, nsec = utc_ns_to_gps_stamp(t)
        out.append(FrameStamp(k * N, sec, nsec, (k % fix_every) // 24))
    if first_zero:
        out[0] = FrameStamp(0, 0, 0, 0)
    return out


def fit(st: list[FrameStamp], **kw: object) -> TimingModel:
    return fit_timing(st, nominal_rate_hz=12000.0, host_ref_ns=T0 + 250_000_000, **kw)


def test_gps_stamp_round_trip_and_week_from_host() -> None:
    sec, nsec = utc_ns_to_gps_stamp(T0)
    assert gps_stamp_to_utc_ns(sec, nsec, T0 + 3 * 86400 * NS_PER_S) == T0
    assert gps_stamp_to_utc_ns(sec, nsec, T0 - 3 * 86400 * NS_PER_S) == T0
    assert ns_to_iso(T0).endswith(".123456789Z")


def test_clean_fit_is_exact() -> None:
    m = fit(stamps())
    assert abs(m.t0_ns - T0) <= 100
    assert isinstance(m.t0_ns, int)
    assert m.sample_rate_hz == pytest.approx(12001.137, abs=0.01)
    assert m.residual_ns < 1000
    assert m.outliers == 0 and m.frames == 100 and m.locked
    assert m.fixes >= 2
    assert "first_frame_dropped" in m.flags or "empty_stamps" in m.flags
    i = 40_000
    expected = T0 + round(Fraction(i * NS_PER_S) / Fraction(RATE))
    assert abs(time_of_sample(m, i) - expected) <= 100
    assert sample_at(m, expected) == pytest.approx(i, abs=0.01)


def test_stale_first_and_hours_off_outlier_are_dropped() -> None:
    st = stamps()
    sec, nsec = utc_ns_to_gps_stamp(T0 - 300 * NS_PER_S)  # first stamp 5 minutes stale
    st[0] = FrameStamp(0, sec, nsec, 0)
    sec, nsec = utc_ns_to_gps_stamp(T0 - 5 * 3600 * NS_PER_S)  # hours early, "fresh"
    st[7] = FrameStamp(7 * N, sec, nsec, 0)
    sec, nsec = utc_ns_to_gps_stamp(T0 + 20 * N * NS_PER_S // 12001 + 40_000)  # 40 us off
    st[20] = FrameStamp(20 * N, sec, nsec, st[20].last_gps_solution)
    m = fit(st)
    assert abs(m.t0_ns - T0) <= 100
    assert m.sample_rate_hz == pytest.approx(12001.137, abs=0.01)
    assert m.outliers == 2  # the hours-off one (far from host) and the 40 us one
    assert m.residual_ns < 1000
    assert "far_from_host" in m.flags and "outliers" in m.flags


def test_first_frame_never_trusted_even_when_plausible() -> None:
    st = stamps(first_zero=False)
    sec, nsec = utc_ns_to_gps_stamp(T0 + 2_000)  # 2 us off: would bias a naive fit
    st[0] = FrameStamp(0, sec, nsec, 0)
    m = fit(st)
    assert abs(m.t0_ns - T0) <= 100
    assert m.outliers == 0


def test_all_zero_stamps_fall_back_to_host_clock_flagged() -> None:
    st = [FrameStamp(k * N, 0, 0, 0) for k in range(30)]
    m = fit(st)
    assert not m.locked and not m.gps
    assert "no_gps_stamps" in m.flags and "host_clock" in m.flags
    assert m.t0_ns == T0 + 250_000_000
    with pytest.raises(TimingError, match="no usable GPS stamp"):
        fit(st, host_fallback=False)


def test_no_gps_clock() -> None:
    st = [FrameStamp(k * N, 0, 0, 255) for k in range(30)]
    m = fit(st)
    assert "no_gps" in m.flags and not m.locked


def test_stamps_far_from_host_are_flagged_not_locked() -> None:
    st = stamps()
    m = fit_timing(st, nominal_rate_hz=12000.0, host_ref_ns=T0 + 3600 * NS_PER_S)
    assert not m.locked
    assert "host_clock_disagrees" in m.flags
    assert m.host_clock_offset_s == pytest.approx(-3600, abs=1)
    tight = fit(st, max_host_offset_s=0.1)  # 250 ms host error > 100 ms threshold
    assert not tight.locked


def test_few_fixes_not_locked() -> None:
    m = fit(stamps(frames=20, fix_every=1000))
    assert m.fixes == 0 and not m.locked and "few_fixes" in m.flags
    assert abs(m.t0_ns - T0) <= 100  # still a good GPS fit


def test_model_dict_round_trip_and_shift() -> None:
    m = fit(stamps())
    d = m.as_dict()
    assert set(d) == {
        "t0_ns",
        "sample_rate_hz",
        "residual_ns",
        "fixes",
        "outliers",
        "frames",
        "locked",
        "host_clock_offset_s",
        "flags",
    }
    assert TimingModel.from_dict(d) == m
    s = m.shifted(1000)
    assert s.t0_ns == time_of_sample(m, 1000)
    assert m.row_fields()["first_sample_ns"] == m.t0_ns


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="nominal_rate_hz"):
        fit_timing(stamps(), nominal_rate_hz=0.0, host_ref_ns=T0)
    with pytest.raises(ValueError, match="max_host_offset_s"):
        fit_timing(stamps(), nominal_rate_hz=12000.0, host_ref_ns=T0, max_host_offset_s=0)
