"""What ``tessera serve`` runs to deliver: the webhook follower and senders, the decision
log streamer, and their metrics."""

from __future__ import annotations

import contextlib
import os
import socket

from prometheus_client import CollectorRegistry, Counter

from issuer.store import Store
from pdp.audit.exclusive import Exclusive
from pdp.delivery.follower import EventFollower
from pdp.delivery.streaming import Batching, DecisionLogStreamer, open_sink
from pdp.delivery.webhooks import Retries, Sender
from pdp.serve.config import ServeConfig


def deliver(
    config: ServeConfig, store: Store, registry: CollectorRegistry, stack: contextlib.AsyncExitStack
) -> None:
    """Start what the ``webhook*`` and ``decision_log*`` settings ask for (nothing when
    they are unset), counting into ``registry``; each part is stopped by ``stack``."""
    if config.webhook_targets:
        _webhooks(config, store, registry, stack)
    if config.decision_log:
        _decision_log(config, store, registry, stack)


def _webhooks(
    config: ServeConfig, store: Store, registry: CollectorRegistry, stack: contextlib.AsyncExitStack
) -> None:
    deliveries = Counter(
        "tessera_webhook_deliveries",
        "Webhook delivery attempts by outcome (delivered, retry, dead_letter).",
        ["outcome"],
        registry=registry,
    )
    dead = Counter(
        "tessera_webhook_dead_letters",
        "Webhook events given up after their attempts or age (kept in the outbox).",
        registry=registry,
    )
    dropped = Counter(
        "tessera_webhook_dropped",
        "Webhook events not queued because the outbox was at webhook_queue.",
        registry=registry,
    )
    follower = Exclusive(
        store,
        "webhook-events",
        lambda: EventFollower(
            store, config.webhook_targets, config.webhook_source, config.webhook_queue, dropped
        ),
    )
    retries = Retries(
        config.webhook_max_attempts,
        config.webhook_max_age,
        config.webhook_backoff,
        config.webhook_timeout,
    )
    sender = Sender(store, config.webhook_secret, retries, deliveries, dead)
    for job in (follower, sender):
        job.start()
        stack.callback(job.stop)


def _decision_log(
    config: ServeConfig, store: Store, registry: CollectorRegistry, stack: contextlib.AsyncExitStack
) -> None:
    sent = Counter(
        "tessera_decision_logs_sent",
        "Decision-log entries shipped.",
        registry=registry,
    )
    dropped = Counter(
        "tessera_decision_logs_dropped",
        "Decision-log entries dropped after their batch's attempts failed.",
        registry=registry,
    )
    sink = open_sink(config.decision_log, config.decision_log_encoding == "gzip")
    batching = Batching(
        config.decision_log_batch,
        config.decision_log_interval,
        config.decision_log_attempts,
        config.decision_log_backoff,
    )
    labels = {"id": f"{socket.gethostname()}:{os.getpid()}", **config.decision_log_label_map}
    streamer = Exclusive(
        store,
        "decision-log",
        lambda: DecisionLogStreamer(store, sink, batching, labels, (sent, dropped)),
    )
    streamer.start()
    stack.callback(streamer.stop)
