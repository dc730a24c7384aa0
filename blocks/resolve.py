"""Turn the flow's configuration parameters into blocks, engines and receivers.

``"auto"`` means: use the project's saved block named ``rf-acquisition`` when there is
one, otherwise the embedded default (local folder, SQLite, simulated receivers). What was
chosen is always logged, so a run never silently writes somewhere unexpected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from sqlalchemy import Engine

from blocks.configure import DEFAULT_BLOCK_NAME
from blocks.database import TimescaleDBConnection, sqlite_engine
from blocks.receiver import KiwiSDRReceiver, check_receiver_name
from blocks.storage import describe, local_storage

RECEIVER_BLOCK_SLUG = "kiwisdr-receiver"


def default_data_dir() -> Path:
    """Where the embedded default keeps recordings and its SQLite file."""
    return Path(os.environ.get("RF_DATA_DIR", "data")).resolve()


@dataclass
class StorageChoice:
    block: Block
    description: str


async def _load_block(ref: str) -> Block:
    try:
        return await Block.aload(ref)
    except (ValueError, RuntimeError, ObjectNotFound) as exc:
        # Prefect reports a saved block that fails validation as a RuntimeError whose
        # cause names the fields: keep both.
        why = f"{exc}" + (f" ({exc.__cause__})" if exc.__cause__ else "")
        raise ValueError(f"block {ref!r} could not be loaded: {why}") from None


async def _saved(slug: str, name: str) -> bool:
    """Is a block ``slug/name`` saved? Asked without importing its block type, so the
    local default never pays for importing prefect_aws (0.85 s)."""
    async with get_client() as client:
        try:
            await client.read_block_document_by_name(name, block_type_slug=slug)
        except ObjectNotFound:
            return False
        except PrefectHTTPStatusError as exc:  # the block type was never registered
            if exc.response.status_code == 404:
                return False
            raise
    return True


async def resolve_storage(spec: str | Block, data_dir: Path) -> StorageChoice:
    """``"auto"`` | ``"local"`` | ``"<block-type-slug>/<name>"`` | a filesystem block (a
    block parameter picked in the UI) -> a filesystem block."""
    if isinstance(spec, Block):
        if not hasattr(spec, "awrite_path"):
            raise ValueError(f"storage={type(spec).__name__} is not a writable filesystem block")
        return StorageChoice(spec, describe(spec))
    if spec == "auto":
        # A saved block that fails to load (bad fields, missing module) is an error, never
        # a silent fall back to the local folder.
        if not await _saved("s3-bucket", DEFAULT_BLOCK_NAME):
            spec = "local"
        else:
            bucket = await _load_block(f"s3-bucket/{DEFAULT_BLOCK_NAME}")
            name = getattr(bucket, "bucket_name", "?")
            return StorageChoice(bucket, f"s3-bucket/{DEFAULT_BLOCK_NAME} ({name})")
    if spec == "local":
        folder = data_dir / "recordings"
        return StorageChoice(local_storage(folder), f"local folder {folder}")
    if "/" not in spec:
        raise ValueError(
            f"storage={spec!r}: use 'auto', 'local' or '<block-type>/<block-name>' "
            "(e.g. 's3-bucket/rf-acquisition')"
        )
    block = await _load_block(spec)
    if not hasattr(block, "awrite_path"):
        raise ValueError(f"storage={spec!r} is not a writable filesystem block")
    return StorageChoice(block, spec)


@dataclass
class DatabaseChoice:
    engine: Engine
    description: str


async def resolve_database(spec: str | TimescaleDBConnection, data_dir: Path) -> DatabaseChoice:
    """``"auto"`` | ``"sqlite"`` | ``"timescaledb-connection/<name>"`` | a
    TimescaleDBConnection block (a block parameter) -> an engine."""
    if isinstance(spec, TimescaleDBConnection):
        name = spec._block_document_name or f"{spec.host}:{spec.port}/{spec.database}"
        return DatabaseChoice(spec.get_engine(), f"timescaledb-connection/{name}")
    if spec == "auto":
        if not await _saved("timescaledb-connection", DEFAULT_BLOCK_NAME):
            spec = "sqlite"  # a saved block that fails validation raises below instead
        else:
            block = await _load_block(f"timescaledb-connection/{DEFAULT_BLOCK_NAME}")
            assert isinstance(block, TimescaleDBConnection)
            engine = block.get_engine()
            return DatabaseChoice(engine, f"timescaledb-connection/{DEFAULT_BLOCK_NAME}")
    if spec == "sqlite":
        path = data_dir / "rf_acquisition.db"
        return DatabaseChoice(sqlite_engine(path), f"SQLite {path}")
    if not spec.startswith("timescaledb-connection/"):
        raise ValueError(
            f"database={spec!r}: use 'auto', 'sqlite' or 'timescaledb-connection/<block-name>'"
        )
    block = await _load_block(spec)
    assert isinstance(block, TimescaleDBConnection)
    return DatabaseChoice(block.get_engine(), spec)


async def saved_receivers(tag: str | None = None) -> dict[str, KiwiSDRReceiver]:
    """The saved KiwiSDRReceiver blocks, by name, in ONE API call (not one per block).

    With ``tag``, only the documents carrying it are turned into blocks. A saved block
    that fails validation is an error naming it, never silently left out.
    """
    async with get_client() as client:
        try:
            docs = await client.read_block_documents_by_type(
                block_type_slug=RECEIVER_BLOCK_SLUG, include_secrets=True
            )
        except (ObjectNotFound, PrefectHTTPStatusError) as exc:
            # 404 "Block type not found": the type was never registered, so none are saved.
            if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code != 404:
                raise
            return {}
    out: dict[str, KiwiSDRReceiver] = {}
    for doc in sorted((d for d in docs if d.name and not d.is_anonymous), key=lambda d: d.name):
        if tag and tag not in (doc.data.get("tags") or []):
            continue
        try:
            block = KiwiSDRReceiver._from_block_document(doc)
        except ValueError as exc:
            raise ValueError(f"receiver block {doc.name!r} is invalid: {exc}") from None
        out[str(doc.name)] = block  # type: ignore[assignment]
    return out


def known_tags(receivers: dict[str, KiwiSDRReceiver]) -> str:
    """The tags these receivers carry, sorted and comma-separated (for error messages)."""
    tags = sorted({t for r in receivers.values() for t in r.tags})
    return ", ".join(tags) or "(none: no receiver carries a tag)"


async def resolve_network(network: str, tag: str | None = None) -> str:
    """``"auto"`` -> ``"blocks"`` when receiver blocks are saved, else ``"simulated"``.

    Decided before anything else because a simulated run also changes where ``"auto"``
    storage and database point (the local defaults, never production). A tag no saved
    receiver carries is an error listing the tags they do carry, not a silent switch to
    the simulated network.
    """
    if network == "simulated":
        return network
    if network not in ("auto", "blocks"):
        raise ValueError(f"network={network!r}: use 'auto', 'simulated' or 'blocks'")
    if await saved_receivers(tag):
        return "blocks"
    if tag and (saved := await saved_receivers()):
        raise ValueError(
            f"tag={tag!r}: no saved receiver has this tag; known tags: {known_tags(saved)}"
        )
    if network == "blocks":
        raise ValueError("network='blocks' but no KiwiSDR Receiver blocks are saved")
    return "simulated"


def select_receivers(
    available: dict[str, KiwiSDRReceiver], names: list[str] | None, tag: str | None
) -> dict[str, KiwiSDRReceiver]:
    """Pick receivers by name and/or tag; unknown names are an error that lists the known."""
    chosen = dict(available)
    if names:
        for name in names:
            check_receiver_name(name)
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ValueError(
                f"receivers: unknown {', '.join(unknown)}; known: {', '.join(sorted(available))}"
            )
        chosen = {n: available[n] for n in names}
        disabled = [n for n in names if not available[n].enabled]
        if disabled:
            raise ValueError(
                f"receivers: {', '.join(disabled)} disabled (enabled: false in the block); "
                "enable them or leave them out"
            )
    if tag:
        chosen = {n: r for n, r in chosen.items() if tag in r.tags}
        if not chosen:
            raise ValueError(
                f"tag={tag!r}: no receiver has this tag; known tags: {known_tags(available)}"
            )
    return {n: r for n, r in chosen.items() if r.enabled}
