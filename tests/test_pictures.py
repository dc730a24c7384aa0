"""Spectrum pictures: levels survive the downsampling; the PNG is a real picture."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tasks.pictures import Spectrum, data_uri, spectrum_overlay_png


def test_downsampled_spectrum_keeps_levels_and_frequencies() -> None:
    n, rate = 4096, 12_000.0
    density = np.full(n, 1e-9)
    density[n // 2 + 100] = 1e-9 * 4096 / 8  # one strong bin
    spectrum = Spectrum.from_density(density, rate, points=512)
    assert spectrum.frequency_hz.size == 512
    assert spectrum.frequency_hz[0] == pytest.approx(-rate / 2 + 3.5 * rate / n)
    assert np.median(spectrum.density_dbfs_hz) == pytest.approx(-90.0, abs=1e-9)
    # the strong bin is averaged with its 7 neighbours: power kept, not the peak
    peak = spectrum.density_dbfs_hz.max()
    assert peak == pytest.approx(10 * np.log10(1e-9 * (7 + 512) / 8), abs=1e-6)


def test_bad_spectrum_is_refused() -> None:
    with pytest.raises(ValueError, match="sample_rate_hz"):
        Spectrum.from_density(np.ones(8), 0.0)


def test_overlay_is_a_png_of_the_asked_size() -> None:
    rng = np.random.default_rng(3)
    spectra = {
        f"rx{i}": Spectrum.from_density(rng.exponential(1e-9, 2048), 12_000.0) for i in range(3)
    }
    png = spectrum_overlay_png(spectra, "three receivers", width_px=800, height_px=400)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (800, 400)
    assert data_uri(png).startswith("data:image/png;base64,iVBORw0KGgo")
    with pytest.raises(ValueError, match="no spectra"):
        spectrum_overlay_png({}, "none")
