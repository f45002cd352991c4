"""Adapters that serve the engine: gRPC tessera.v1, Envoy ext_authz and AuthZEN."""
