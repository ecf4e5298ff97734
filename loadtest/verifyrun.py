"""Wiring of ``verify``: the record source, MongoDB, Redis, and ``verify.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Any

import msgspec

from chat.config import Settings
from chat.keys import KeySpace
from chat.storage.mongo import COLLECTION
from chat.storage.mongo import connect as mongo_connect
from loadtest import jtl
from loadtest.manifest import read_manifests
from loadtest.records import iter_records
from loadtest.redisinfo import RedisObserver
from loadtest.verify import VERIFY_FILE, RecordSource, Verifier, VerifyOptions, failed_checks

log = logging.getLogger(__name__)


def source_for(run_dir: Path, jtl_path: Path | None) -> RecordSource:
    run_dir.mkdir(parents=True, exist_ok=True)  # verify.json and the spill files go there
    if jtl_path is not None:
        path = jtl_path
        return RecordSource(jtl.chat_ids(path), lambda: jtl.records(path), f"jmeter:{path}")
    manifests = read_manifests(run_dir)
    if not manifests:
        raise SystemExit(f"{run_dir}: no manifest.json (not a run directory?)")
    chats = sorted({c for m in manifests for c in m.chat_ids()})
    return RecordSource(chats, lambda: iter_records(run_dir), f"generator:{run_dir}")


async def verify_run(
    run_dir: Path,
    settings: Settings,
    options: VerifyOptions,
    *,
    jtl: Path | None = None,
    use_redis: bool = True,
) -> dict[str, Any]:
    source = source_for(run_dir, jtl)
    client = mongo_connect(settings.mongo_url.get_secret_value(), appname="loadtest-verify")
    redis: Any = None
    seq_counters = None
    if use_redis:
        from chat.redisconn import connect

        redis = connect(settings, max_connections=4)
        keyspace = KeySpace(settings.redis_key_prefix, settings.stream_partitions)
        seq_counters = RedisObserver(redis, keyspace).seq_counters
    try:
        verifier = Verifier(
            client[settings.mongo_db][COLLECTION], options, seq_counters=seq_counters
        )
        result = await verifier.verify(source, spill_dir=run_dir)
    finally:
        await client.close()
        if redis is not None:
            await redis.aclose()
    write_verify(run_dir, result)
    return result


def write_verify(run_dir: Path, result: dict[str, Any]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / VERIFY_FILE
    path.write_bytes(msgspec.json.format(msgspec.json.encode(result)))
    return path


def print_summary(result: dict[str, Any], out: IO[str]) -> None:
    c = result["counts"]
    print(
        f"verify {result['verdict'].upper()}: sent={c['sent']} acked={c['acked']} "
        f"persisted={c['persisted']} missing={c['missing']} duplicated={c['duplicated']} "
        f"(persisted without ack: {c['persisted_unacked']}, errors: {c['errors'] or 'none'})",
        file=out,
    )
    for kind in failed_checks(result):
        print(f"  {kind}: {result['violations'][kind]}", file=out)
        for example in result["examples"].get(kind, [])[:3]:
            print(f"    e.g. {example}", file=out)
    for klass, kinds in result["latency"].items():
        parts = [
            f"{kind} p50={s.get('p50_ms', 0):.1f} p99={s.get('p99_ms', 0):.1f} ms"
            for kind, s in kinds.items()
            if s.get("count")
        ]
        if parts:
            print(f"  {klass}: " + ", ".join(parts), file=out)
    out.flush()


def load_verify(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / VERIFY_FILE
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data
