"""Ports the security groups open and the task definitions map.

They come from the services' own setting defaults (libs/chat/config.py) so the
infrastructure and the processes cannot disagree; the data store ports are the
engines' standard ones.
"""

from __future__ import annotations

from chat.config import Settings


def _default_port(field: str) -> int:
    default = Settings.model_fields[field].default
    assert isinstance(default, int), field
    return default


#: Gateway HTTP + WebSocket; the ALB's only target port.
GATEWAY = _default_port("gateway_port")
#: Gateway ZeroMQ SUB socket; workers and priority tasks connect to it to fan out.
FANOUT = _default_port("fanout_port")
#: Worker/priority /healthz /readyz /metrics (reached only from inside the task).
HEALTH = _default_port("health_port")
REDIS = 6379
MONGO = 27017
MYSQL = 3306
HTTPS = 443
HTTP = 80
