"""The proxy's Prometheus metrics, served on ``metrics_port`` when it is set.

- ``tessera_mcp_proxy_responses_total{upstream, status}``: every answer of an MCP
  endpoint by HTTP status (401 and 403 are the token and scope refusals);
- ``tessera_mcp_proxy_decisions_total{upstream, method, result}``: each decided
  ``tools/call``, ``prompts/get`` and ``resources/read``, allow or deny;
- ``tessera_mcp_proxy_upstream_seconds{upstream}``: the wait for the upstream's answer
  (status and headers);
- ``tessera_mcp_proxy_upstream_failures_total{upstream, reason}``: calls answered with a
  JSON-RPC error because the upstream timed out, was unreachable, failed, or sent
  something that is not its answer, or no credential for it could be had;
- ``tessera_mcp_proxy_pdp_failures_total{call, code}``: calls to the PDP (``Authorize``,
  ``ListAllowed``) it did not answer, by gRPC status (UNAUTHENTICATED: the proxy's token
  was refused or could not be had; UNAVAILABLE…); each is a deny, or an empty list.

With ``decisions = "local"`` the same registry holds the decision service's own metrics
(``tessera_decisions_total``, ``tessera_engine_seconds``, ``tessera_bundle_info``,
``tessera_reloads_total``…), as ``tessera serve`` exposes them.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram

from pdp.metrics import RPC_BUCKETS, serve_registry

UPSTREAM_BUCKETS = (*RPC_BUCKETS[:-1], 0.5, 1.0, 5.0, 30.0)


class ProxyMetrics:
    """The proxy's counters; children are kept per label set (``labels`` looks them up
    by a tuple on every call otherwise)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.responses = Counter(
            "tessera_mcp_proxy_responses",
            "Answers of the MCP endpoints, by upstream and HTTP status.",
            ["upstream", "status"],
            registry=r,
        )
        self.decisions = Counter(
            "tessera_mcp_proxy_decisions",
            "Decided MCP calls, by upstream, method and result (allow, deny).",
            ["upstream", "method", "result"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "tessera_mcp_proxy_upstream_seconds",
            "Time until the upstream's answer (status and headers), by upstream.",
            ["upstream"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.failures = Counter(
            "tessera_mcp_proxy_upstream_failures",
            "Calls answered with a JSON-RPC error for the upstream, by upstream and reason.",
            ["upstream", "reason"],
            registry=r,
        )
        self.pdp_failures = Counter(
            "tessera_mcp_proxy_pdp_failures",
            "Calls to the PDP it did not answer (each a deny), by call and gRPC status.",
            ["call", "code"],
            registry=r,
        )
        self._counters: dict[tuple[str, ...], Counter] = {}
        self._waits: dict[str, Histogram] = {}

    def responded(self, upstream: str, status: int) -> None:
        self._counter(self.responses, "r", upstream, str(status)).inc()

    def decided(self, upstream: str, method: str, allow: bool) -> None:
        result = "allow" if allow else "deny"
        self._counter(self.decisions, "d", upstream, method, result).inc()

    def waited(self, upstream: str, seconds: float) -> None:
        child = self._waits.get(upstream)
        if child is None:
            child = self._waits[upstream] = self.upstream_seconds.labels(upstream)
        child.observe(seconds)

    def failed(self, upstream: str, reason: str) -> None:
        self._counter(self.failures, "f", upstream, reason).inc()

    def pdp_failed(self, call: str, code: str) -> None:
        self._counter(self.pdp_failures, "p", call, code).inc()

    def _counter(self, metric: Counter, *key: str) -> Counter:
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = metric.labels(*key[1:])
        return child

    def serve(self, port: int, host: str) -> WSGIServer:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port) in a daemon thread."""
        return serve_registry(self.registry, port, host)
