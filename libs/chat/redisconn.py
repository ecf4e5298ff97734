"""Redis connections: one factory for a single server (local) or a cluster (ElastiCache).

Both clients expose the same async command API (``redis.asyncio``); the cluster client
routes each command by its key's hash slot, which is why every multi-key command and
script in this code base uses keys of one slot (:mod:`chat.keys`).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from chat.config import Settings

#: Connections per client: blocking XREADGROUPs hold one each (one per partition read).
MAX_CONNECTIONS = 256


def connect(settings: Settings, *, max_connections: int = MAX_CONNECTIONS) -> Any:
    """An async Redis or RedisCluster client for ``settings.redis_url`` (not yet used)."""
    url = settings.redis_url.get_secret_value()
    common: dict[str, Any] = {"health_check_interval": 15, "socket_keepalive": True}
    if settings.redis_cluster:
        return RedisCluster.from_url(url, max_connections=max_connections, **common)
    return aioredis.Redis.from_url(url, max_connections=max_connections, **common)
