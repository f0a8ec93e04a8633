"""Alembic migrations of the feedback database, applied by ``nxp2-cds migrate`` (``Store.migrate``)."""
