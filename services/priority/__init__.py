"""The priority service: drains the live streams (latency-tuned consumer)."""
