"""The worker service: drains the bulk streams (throughput-tuned consumer)."""
