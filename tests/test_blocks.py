"""Receiver configuration, receiver files and settings from the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import blocks.configure
from blocks.configure import load_settings
from blocks.database import timescaledb_from_env, timescaledb_from_settings
from blocks.receiver import (
    KiwiSDRReceiver,
    check_receiver_name,
    load_receiver_file,
    seed_network_path,
)
from blocks.resolve import select_receivers
from blocks.settings import PostgresSettings
from blocks.storage import minio_bucket_from_env, minio_bucket_from_settings
from flows.configure import main as configure_main
from tasks.kiwisdr.network import simulated_network


def test_seed_network_loads_with_the_design_positions() -> None:
    receivers = load_receiver_file(seed_network_path(), placeholder_url="http://x:1")
    by_name = {r._block_document_name: r for r in receivers}
    assert len(by_name) == 7
    assert (by_name["torino"].latitude, by_name["torino"].longitude) == (45.044, 7.672)
    assert by_name["milano-baggio"].altitude_m == 120
    assert all(r.tunable_range_hz == (144e6, 146e6) for r in receivers)
    assert all(r.freq_offset_khz == 116000 for r in receivers)


def test_receiver_file_without_urls_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'aquila-di-giaveno' has no url"):
        load_receiver_file(seed_network_path())
    dup = tmp_path / "dup.yaml"
    dup.write_text(
        "receivers:\n"
        "  - {name: a, url: 'http://h:1', latitude: 1, longitude: 2}\n"
        "  - {name: a, url: 'http://h:2', latitude: 1, longitude: 2}\n"
    )
    with pytest.raises(ValueError, match="'a' appears twice"):
        load_receiver_file(dup)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("latitude", 95.0, "latitude"),
        ("url", "ftp://x", "url must look like"),
        ("max_frequency_hz", 1.0, "min_frequency_hz .* must be below"),
    ],
)
def test_receiver_validation_names_the_field(field: str, value: object, match: str) -> None:
    args = {"url": "http://h:8073", "latitude": 45.0, "longitude": 7.0, field: value}
    with pytest.raises(ValidationError, match=match):
        KiwiSDRReceiver(**args)


def test_receiver_names_are_safe() -> None:
    assert check_receiver_name("passo-del-giovi") == "passo-del-giovi"
    for bad in ("Torino", "a b", "../x", "-x", ""):
        with pytest.raises(ValueError, match="lowercase letters, digits or dashes"):
            check_receiver_name(bad)


def test_select_receivers_by_name_and_tag() -> None:
    _, receivers = simulated_network()
    available = {r._block_document_name or "": r for r in receivers}
    assert list(select_receivers(available, ["genova", "torino"], None)) == ["genova", "torino"]
    assert len(select_receivers(available, None, "2m")) == 7
    with pytest.raises(ValueError, match="unknown nowhere; known: aquila"):
        select_receivers(available, ["nowhere"], None)
    with pytest.raises(ValueError, match="tag='70cm': no receiver"):
        select_receivers(available, None, "70cm")


def test_settings_from_env_file_keep_secrets_secret(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text(
        "# written by scripts/services.sh\n"
        "export RF_PG_HOST=127.0.0.1\nexport RF_PG_PORT=5433\nexport RF_PG_DATABASE=rf\n"
        "export RF_PG_USER=rf_admin\nexport RF_PG_PASSWORD='s3cr3t-pg'\n"
        "export RF_S3_ENDPOINT=http://127.0.0.1:9000\nexport RF_S3_ACCESS_KEY=AK\n"
        "export RF_S3_SECRET_KEY=s3cr3t-s3\nexport RF_S3_BUCKET=rf-acquisition\n"
    )
    s3, pg = load_settings(env_file)
    assert s3 is not None and pg is not None
    db = timescaledb_from_settings(pg)
    assert db.password is not None and db.password.get_secret_value() == "s3cr3t-pg"
    assert "s3cr3t-pg" not in repr(db) and "s3cr3t-pg" not in str(db.url())
    assert "s3cr3t-pg" not in repr(pg) and "s3cr3t-s3" not in repr(s3)
    bucket = minio_bucket_from_settings(s3)
    assert bucket.bucket_name == "rf-acquisition"
    assert "s3cr3t-s3" not in repr(bucket)
    with pytest.raises(KeyError, match="RF_S3_ENDPOINT"):
        minio_bucket_from_env({})


_PG = {"RF_PG_HOST": "127.0.0.1", "RF_PG_DATABASE": "rf", "RF_PG_USER": "rf_admin"}


@pytest.mark.parametrize("port", ["abc", "0", "65536", "-5", "5432.0", " ", "\uff15\uff14", ""])
def test_a_bad_pg_port_is_named_with_its_range(port: str) -> None:
    if not port:  # empty counts as not set
        with pytest.raises(KeyError, match="RF_PG_PORT"):
            timescaledb_from_env({**_PG, "RF_PG_PORT": port})
        return
    with pytest.raises(ValueError, match=r"RF_PG_PORT=.*: must be a TCP port number, 1-65535"):
        timescaledb_from_env({**_PG, "RF_PG_PORT": port})


@pytest.mark.parametrize("port", ["1", "5432", " 5433 ", "65535"])
def test_good_pg_ports(port: str) -> None:
    assert timescaledb_from_env({**_PG, "RF_PG_PORT": port}).port == int(port)


@pytest.fixture
def from_env_saves(monkeypatch: pytest.MonkeyPatch) -> list[PostgresSettings | None]:
    """What ``configure from-env`` would save (nothing reaches a Prefect API)."""
    seen: list[PostgresSettings | None] = []

    def save(s3: Any, pg: PostgresSettings | None, name: str, **_: Any) -> list[str]:
        seen.append(pg)
        return [f"timescaledb-connection/{name}"]

    monkeypatch.setattr(blocks.configure, "register", lambda: None)
    monkeypatch.setattr(blocks.configure, "save_from_env", save)
    return seen


def test_from_env_file_wins_over_a_stale_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, from_env_saves: list[PostgresSettings | None]
) -> None:
    # the shell still holds the previous `. .services/env`: old port and password
    for key, value in _PG.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RF_PG_HOST", "10.9.9.9")
    monkeypatch.setenv("RF_PG_PORT", "5999")
    monkeypatch.setenv("RF_PG_PASSWORD", "old-password")
    monkeypatch.setenv("RF_PG_SSLMODE", "require")  # not in the file: kept
    env_file = tmp_path / "env"
    env_file.write_text(
        "export RF_PG_HOST=127.0.0.1\nexport RF_PG_PORT=6123\nexport RF_PG_DATABASE=rf\n"
        "export RF_PG_USER=rf_admin\nexport RF_PG_PASSWORD='new-password'\n"
    )
    assert configure_main(["from-env", "--env-file", str(env_file)]) == 0
    (saved,) = from_env_saves
    assert saved is not None and saved.password is not None
    assert (saved.port, saved.host) == (6123, "127.0.0.1")
    assert saved.password.get_secret_value() == "new-password"
    assert saved.sslmode == "require"
    # without a file the environment is all there is
    assert configure_main(["from-env"]) == 0
    assert from_env_saves[1] is not None and from_env_saves[1].port == 5999


def test_from_env_reports_a_bad_port_and_saves_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(blocks.configure, "register", lambda: None)
    saved: list[str] = []
    monkeypatch.setattr(
        "prefect.blocks.core.Block.save", lambda self, name, **kw: saved.append(name)
    )
    monkeypatch.setattr("tasks.bucket.ensure_bucket", lambda bucket: False)
    s3 = {
        "RF_S3_ENDPOINT": "http://127.0.0.1:1",
        "RF_S3_ACCESS_KEY": "AK",
        "RF_S3_SECRET_KEY": "SK",
        "RF_S3_BUCKET": "rf-acquisition",
    }
    for key, value in {**_PG, **s3, "RF_PG_PORT": "54x32"}.items():
        monkeypatch.setenv(key, value)
    assert configure_main(["from-env"]) == 2
    assert "RF_PG_PORT='54x32': must be a TCP port number, 1-65535" in capsys.readouterr().err
    assert saved == []  # not even the (valid) storage blocks


@pytest.mark.flow
def test_block_types_register_for_the_ui(prefect_server: None) -> None:
    import asyncio

    from prefect.client.orchestration import get_client

    from blocks.configure import register

    register()

    async def slugs() -> set[str]:
        async with get_client() as client:
            return {t.slug for t in await client.read_block_types()}

    found = asyncio.run(slugs())
    assert {"kiwisdr-receiver", "timescaledb-connection"} <= found
    rx = KiwiSDRReceiver(url="http://h:8073", latitude=45.0, longitude=7.0, password="pw")
    rx.save("register-test", overwrite=True)
    loaded = KiwiSDRReceiver.load("register-test")
    assert loaded.password is not None and loaded.password.get_secret_value() == "pw"
    assert "pw" not in repr(loaded)


def test_simulated_noise_follows_the_noise_figure() -> None:
    from tasks.kiwisdr.simulator import SimulatedReceiver

    rx = SimulatedReceiver("x", 45.0, 7.0, noise_figure_db=6.0, full_scale_dbm=-60.0)
    assert rx.noise_density == pytest.approx(-174.0 + 6.0 + 60.0)
    assert SimulatedReceiver("y", 45.0, 7.0, noise_density_dbfs_hz=-99.0).noise_density == -99.0
    network, _ = simulated_network()
    assert network.truth("torino", 145.5e6).noise_density_dbfs_hz == pytest.approx(-104.0)


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "http://127.0.0.1:1"])
def test_from_env_with_a_dead_endpoint_ends_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    endpoint: str,
) -> None:  # fmt: skip
    """No botocore traceback: one line naming the endpoint and the problem, never the
    secret, and nothing saved."""
    monkeypatch.setattr(blocks.configure, "register", lambda: None)
    saved: list[str] = []
    monkeypatch.setattr(
        "prefect.blocks.core.Block.save", lambda self, name, **kw: saved.append(name)
    )
    env_file = tmp_path / "env"
    env_file.write_text(
        f"RF_S3_ENDPOINT={endpoint}\nRF_S3_ACCESS_KEY=AK\n"
        "RF_S3_SECRET_KEY=very-secret-key\nRF_S3_BUCKET=rf-acquisition\n"
    )
    for key in _PG:
        monkeypatch.delenv(key, raising=False)
    assert configure_main(["from-env", "--env-file", str(env_file)]) == 1
    err = capsys.readouterr().err
    problem = [line for line in err.splitlines() if line.startswith("from-env:")]
    assert problem == [
        f"from-env: storage at {endpoint} (bucket rf-acquisition): cannot connect "
        "(nothing answers there): check RF_S3_ENDPOINT; nothing saved"
    ]
    assert "Traceback" not in err and "very-secret-key" not in err
    assert saved == []


@pytest.mark.integration
def test_from_env_with_wrong_credentials_ends_in_one_line(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(blocks.configure, "register", lambda: None)
    monkeypatch.setattr("prefect.blocks.core.Block.save", lambda self, name, **kw: None)
    for key in _PG:
        monkeypatch.delenv(key, raising=False)
    for key, value in {**s3_env, "RF_S3_SECRET_KEY": "wrong-secret-key"}.items():
        if key.startswith("RF_S3_"):
            monkeypatch.setenv(key, value)
    assert configure_main(["from-env"]) == 1
    err = capsys.readouterr().err
    endpoint = s3_env["RF_S3_ENDPOINT"]
    assert f"from-env: storage at {endpoint} (bucket " in err
    assert "credentials refused" in err and "; nothing saved" in err
    assert "Traceback" not in err and "wrong-secret-key" not in err


def test_configuration_errors_share_the_project_root() -> None:
    """One ``except RfAcquisitionError`` catches a bad setting and a failed task alike."""
    from blocks.configure import EndpointProblem
    from blocks.settings import InvalidSetting, MissingSetting
    from tasks.errors import RfAcquisitionError, StorageError

    for cls in (InvalidSetting, MissingSetting, EndpointProblem, StorageError):
        assert issubclass(cls, RfAcquisitionError), cls
    assert issubclass(InvalidSetting, ValueError) and issubclass(EndpointProblem, RuntimeError)
    assert not InvalidSetting("RF_S3_PORT: 0 is outside 1..65535").transient
