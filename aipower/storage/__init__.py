"""Storage layer: SQLAlchemy 2 Core + Alembic; functions in, frozen records out."""
