"""KREE's alembic environment; installed as kree.migrations (see setup.py)."""
