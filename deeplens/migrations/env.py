"""Alembic's entry point for DeepLens' catalog database; run by ``deeplens.db.migrate``
with a connection it already holds (no alembic.ini, no URL here)."""

from alembic import context

connection = context.config.attributes["connection"]
# SQLite alters tables by copying them ("batch" mode); PostgreSQL alters in place.
context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
