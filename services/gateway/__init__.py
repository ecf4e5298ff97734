"""The chat gateway: WebSocket protocol v1, HTTP API v1 and the web client (aiohttp)."""
