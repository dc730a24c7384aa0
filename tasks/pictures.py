"""Pictures of an acquisition for people who look rather than read: PNG bytes, no Prefect.

The spectrum overlay puts every receiver's power spectral density on one axis in dBFS/Hz,
so a receiver with a higher noise floor, a missing signal or an offset carrier stands out
at a glance (a text sparkline with a fixed span cannot show a 3 dB from an 11 dB noise
figure). matplotlib runs with the non-interactive Agg backend: no display is needed, and
it is imported only when a picture is drawn.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Spectrum:
    """One receiver's PSD, downsampled for drawing: frequencies relative to the tuned
    frequency (Hz) and densities in dBFS/Hz."""

    frequency_hz: np.ndarray
    density_dbfs_hz: np.ndarray

    @classmethod
    def from_density(
        cls, density: np.ndarray, sample_rate_hz: float, points: int = 512
    ) -> Spectrum:
        """From a linear, fftshifted two-sided PSD (FS^2/Hz) over ``sample_rate_hz``.

        Bins are averaged in power down to at most ``points`` so a stored or transmitted
        spectrum stays small whatever the FFT size was.
        """
        density = np.asarray(density, dtype=np.float64)
        n = density.size
        if n == 0 or sample_rate_hz <= 0:
            raise ValueError("spectrum: density must be non-empty and sample_rate_hz > 0")
        group = max(1, n // points)
        usable = (n // group) * group
        averaged = density[:usable].reshape(-1, group).mean(axis=1)
        freqs = (np.arange(usable).reshape(-1, group).mean(axis=1) - n / 2) * sample_rate_hz / n
        floor = np.finfo(np.float64).tiny
        return cls(freqs, 10 * np.log10(np.maximum(averaged, floor)))


MAX_LEGEND = 16


def spectrum_overlay_png(
    spectra: Mapping[str, Spectrum], title: str, *, width_px: int = 960, height_px: int = 480
) -> bytes:
    """Every receiver's PSD on one axis; returns PNG bytes."""
    if not spectra:
        raise ValueError("spectrum_overlay_png: no spectra to draw")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    dpi = 96
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    ax = fig.add_subplot()
    for name, spectrum in spectra.items():
        ax.plot(spectrum.frequency_hz / 1e3, spectrum.density_dbfs_hz, linewidth=0.9, label=name)
    ax.set_xlabel("frequency offset from the tuned frequency (kHz)")
    ax.set_ylabel("power spectral density (dBFS/Hz)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if len(spectra) <= MAX_LEGEND:
        ax.legend(fontsize=8, loc="upper right", ncols=2 if len(spectra) > 6 else 1)
    else:  # hundreds of names would bury the plot: say how many instead
        ax.text(0.99, 0.98, f"{len(spectra)} receivers", transform=ax.transAxes,
                ha="right", va="top", fontsize=8)  # fmt: skip
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def data_uri(png: bytes) -> str:
    """A ``data:`` URI: the picture travels inside the markdown artifact itself, so the
    Prefect UI shows it without any storage the browser would have to reach."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
