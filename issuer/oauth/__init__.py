"""The OAuth 2 authorization server: tokens, grants, client authentication, consent."""
