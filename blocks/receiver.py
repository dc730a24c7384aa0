"""Receiver configuration: the ``KiwiSDRReceiver`` block and receiver files (YAML/JSON).

A block is configuration only; the capture code lives in ``tasks/`` and the simulated
network in ``tasks/kiwisdr/network.py`` (blocks import nothing from ``tasks/``). Receiver
files let a whole network be created or updated in one command, and the seed network
ships as one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator, model_validator

RECEIVER_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


class KiwiSDRReceiver(Block):
    """One KiwiSDR receiver of the network (its block document name is the receiver name).

    Example:
        >>> rx = KiwiSDRReceiver(url="http://kiwi.example:8073", latitude=45.0,
        ...                      longitude=7.6, min_frequency_hz=144e6,
        ...                      max_frequency_hz=146e6, freq_offset_khz=116000)
        >>> rx.save("torino", overwrite=True)  # doctest: +SKIP
    """

    _block_type_name = "KiwiSDR Receiver"
    _description = "A KiwiSDR web SDR receiver that streams GPS-timed IQ."
    # Shown in the UI's Example box (a doctest prompt would be escaped away there).
    _code_example = """
    ```python
    from blocks.receiver import KiwiSDRReceiver

    rx = KiwiSDRReceiver(
        url="http://kiwi.example:8073", latitude=45.0, longitude=7.6,
        min_frequency_hz=144e6, max_frequency_hz=146e6, freq_offset_khz=116000,
    )
    rx.save("torino", overwrite=True)
    receiver = KiwiSDRReceiver.load("torino")
    ```
    """

    url: str = Field(title="URL", description="Base URL of the receiver, e.g. http://host:8073")
    display_name: str = Field(
        default="", title="Display name", description="Human-readable station name."
    )
    password: SecretStr | None = Field(
        default=None, title="Password", description="Receiver password, if any."
    )
    latitude: float = Field(title="Latitude (°N)", ge=-90, le=90, description="Degrees north.")
    longitude: float = Field(title="Longitude (°E)", ge=-180, le=180, description="Degrees east.")
    altitude_m: float = Field(
        default=0.0, title="Altitude (m)", ge=-500, le=9000, description="Metres above sea level."
    )
    antenna: str = Field(default="", title="Antenna", description="Antenna description.")
    min_frequency_hz: float = Field(
        default=10e3,
        title="Lowest RF frequency (Hz)",
        gt=0,
        description="Lowest tunable RF frequency.",
    )
    max_frequency_hz: float = Field(
        default=30e6,
        title="Highest RF frequency (Hz)",
        gt=0,
        description="Highest tunable RF frequency.",
    )
    freq_offset_khz: float = Field(
        default=0.0,
        title="Down-converter offset (kHz)",
        description="Down-converter offset: KiwiSDR dial = RF - offset (kHz).",
    )
    gain_db: float = Field(
        default=50.0,
        title="Manual gain (dB)",
        ge=0,
        le=120,
        description="Fixed manual gain (manGain).",
    )
    enabled: bool = Field(
        default=True, title="Enabled", description="Disabled receivers are never captured."
    )
    tags: list[str] = Field(
        default_factory=list, title="Tags", description="Groups to select receivers by."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^(https?|wss?)://[^/\s]+", value):
            raise ValueError(f"url must look like http://host:port, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_range(self) -> KiwiSDRReceiver:
        if self.min_frequency_hz >= self.max_frequency_hz:
            raise ValueError(
                f"min_frequency_hz ({self.min_frequency_hz}) must be below "
                f"max_frequency_hz ({self.max_frequency_hz})"
            )
        return self

    @property
    def tunable_range_hz(self) -> tuple[float, float]:
        return (self.min_frequency_hz, self.max_frequency_hz)


def check_receiver_name(name: str) -> str:
    """Receiver names become block names, object keys and row keys: keep them safe."""
    if not RECEIVER_NAME.match(name):
        raise ValueError(
            f"receiver name {name!r} must be 1-64 lowercase letters, digits or dashes, "
            "starting and ending with a letter or digit"
        )
    return name


def seed_network_path() -> Path:
    return Path(__file__).with_name("networks") / "seed.yaml"


def read_network_file(path: str | Path) -> dict[str, Any]:
    """A receiver file as a mapping with a ``receivers`` list (and optional ``defaults``,
    ``emitter`` for the simulator)."""
    path = Path(path)
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, Mapping) or not isinstance(data.get("receivers"), list):
        raise ValueError(f"{path}: expected a mapping with a 'receivers' list")
    return dict(data)


def load_receiver_file(
    path: str | Path, *, placeholder_url: str | None = None
) -> list[KiwiSDRReceiver]:
    """Read receivers from a YAML/JSON file (``defaults`` apply to every entry).

    Every entry needs a ``url`` unless ``placeholder_url`` is given (the simulator fills
    real ports in later).
    """
    data = read_network_file(path)
    defaults = dict(data.get("defaults") or {})
    out: list[KiwiSDRReceiver] = []
    seen: set[str] = set()
    for i, entry in enumerate(data["receivers"]):
        merged = {**defaults, **entry}
        merged.pop("simulation", None)
        name = check_receiver_name(str(merged.pop("name", "")))
        if name in seen:
            raise ValueError(f"{path}: receiver {name!r} appears twice (entry {i})")
        seen.add(name)
        if placeholder_url is not None:
            merged.setdefault("url", placeholder_url)
        elif not merged.get("url"):
            raise ValueError(f"{path}: receiver {name!r} has no url (e.g. http://host:8073)")
        receiver = KiwiSDRReceiver(**merged)
        receiver._block_document_name = name
        out.append(receiver)
    return out


def receiver_name(receiver: KiwiSDRReceiver) -> str:
    name = receiver._block_document_name
    if not name:
        raise ValueError("receiver block has no name: save or load it by name first")
    return name
