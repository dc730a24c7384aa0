"""Configuration and client factories, the prefect-aws model: Prefect blocks and settings.

- :mod:`blocks.settings`: ``RF_S3_*`` / ``RF_PG_*`` settings (pydantic-settings).
- :mod:`blocks.storage`: the S3Bucket / LocalFileSystem blocks recordings are kept through.
- :mod:`blocks.database`: the TimescaleDB Connection block and the SQLite engine.
- :mod:`blocks.receiver`: the KiwiSDR Receiver block.
- :mod:`blocks.resolve`: a flow's ``storage``/``database``/receiver choice to a block.
- :mod:`blocks.configure`: saves and removes the blocks (the command is ``rfacq configure``).

- :mod:`blocks.errors`: the root of every error the project raises on purpose.

Nothing here imports ``tasks/`` or ``flows/`` (import-linter contracts in pyproject.toml).
"""
