"""``manifest.json``: what a run provisioned (accounts, chats) and how it was configured.

Written by ``run`` before the first message; ``verify`` reads the chat list from it (the
run's chats are fresh, so every message stored in them belongs to the run) and
``report`` shows the configuration. Tokens are not written: they are credentials.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

MANIFEST = "manifest.json"


class ChatEntry(msgspec.Struct, frozen=True):
    chat_id: int
    member_ids: list[int]
    klass: str  # "bulk" (load accounts) or "live" (probe users)
    process: int = 0  # which generator process sends to it (-1: the probes)


class Manifest(msgspec.Struct):
    run_id: str
    shard: int
    shards: int
    target: str
    created_at_ms: int
    config: dict[str, Any]
    chats: list[ChatEntry]
    accounts: int
    probes: int

    def chat_ids(self) -> list[int]:
        return [c.chat_id for c in self.chats]


def write_manifest(run_dir: Path, manifest: Manifest) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / MANIFEST
    path.write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
    return path


def read_manifests(run_dir: Path) -> list[Manifest]:
    """The run's manifest, or every shard's manifest of a gathered AWS run."""
    paths = [run_dir / MANIFEST] if (run_dir / MANIFEST).exists() else []
    paths += sorted(run_dir.glob(f"shard-*/{MANIFEST}"))
    return [msgspec.json.decode(p.read_bytes(), type=Manifest) for p in paths]
