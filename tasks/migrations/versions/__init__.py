"""Migration scripts, applied in order by Alembic (this file only makes them a package)."""
