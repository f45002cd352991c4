"""Delivery: alerts to webhooks as signed CloudEvents, decision logs to collectors."""
