"""Tessera decision plane: the policy language, the engine and its services."""
