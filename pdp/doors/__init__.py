"""The decision point's doors: each converts its protocol's question into a Request once
and builds its answer from the Decision (gRPC ``tessera.v1``, AuthZEN, Envoy ext_authz)."""
