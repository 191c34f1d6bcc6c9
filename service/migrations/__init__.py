"""Alembic migrations for every table of the service and the audit log (one history for both)."""
