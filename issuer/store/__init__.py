"""The agent directory store: SQLite by default, PostgreSQL for many replicas."""
