"""Alembic environment. Runs only through :meth:`cds_service.store.store.Store.migrate`, which hands over an open
connection (inside a transaction, and on PostgreSQL holding the migration advisory lock); there is no alembic.ini.

To write a new revision from a checkout (explicit, stable ids: the next number)::

    python -c "from alembic import command; from cds_service.store.database import alembic_config; \\
    command.revision(alembic_config(), message='seen jtis', rev_id='0002')"

then write its upgrade() and downgrade() and add the same table to ``cds_service.store.schema.metadata``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from cds_service.store.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run the migrations with 'nxp2-cds migrate' (Store.migrate), which provides the connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
