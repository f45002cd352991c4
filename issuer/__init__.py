"""Tessera identity plane: the agent directory, the OAuth 2 authorization server, keys."""
