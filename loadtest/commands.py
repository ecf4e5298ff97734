"""The subcommands of ``python -m loadtest``: argparse namespaces in, exit codes out."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from chat.config import Settings
from loadtest.provision import ApiError
from loadtest.runner import RunConfig

#: verify exits with this when a check failed (1 is left to crashes and bad input).
EXIT_VIOLATION = 1


def parse_shard(text: str) -> tuple[int, int]:
    i, _, n = text.partition("/")
    shard, shards = int(i), int(n or "1")
    if not 0 <= shard < shards:
        raise SystemExit(f"bad --shard {text!r}: want i/N with 0 <= i < N")
    return shard, shards


def run_config(args: argparse.Namespace, target: str, **overrides: Any) -> RunConfig:
    values: dict[str, Any] = {
        "target": target.rstrip("/"),
        "rate": args.rate,
        "ramp_s": args.ramp,
        "hold_s": args.hold,
        "start_rate": args.start_rate,
        "users": args.users,
        "chats": args.chats,
        "chat_size": args.chat_size,
        "message_size": args.message_size,
        "processes": args.processes,
        "transport": args.transport,
        "probes": args.probes,
        "probe_interval_s": args.probe_interval,
        "ack_timeout_s": args.ack_timeout,
        "drain_s": args.drain,
        "seed": args.seed,
        "out_dir": args.out_dir,
    }
    values.update(overrides)
    return RunConfig(**values)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from loadtest.cli import default_target
    from loadtest.runner import run as run_shard

    shard, shards = parse_shard(args.shard)
    cfg = run_config(
        args,
        args.target or default_target(settings),
        run_id=args.run_id,
        shard=shard,
        shards=shards,
        start_at=args.start_at,
        account_prefix=args.account_prefix,
        password=args.password,
        progress=not args.no_progress,
        observe_redis=not args.no_redis,
        upload=args.upload,
    )
    try:
        code, _ = uvloop.run(run_shard(cfg, settings))
    except (ApiError, aiohttp.ClientError, OSError) as e:
        print(f"run aborted: cannot provision through {cfg.target}: {e}", file=sys.stderr)
        return 1
    return code


def verify(args: argparse.Namespace, settings: Settings) -> int:
    from loadtest.verify import VerifyOptions
    from loadtest.verifyrun import print_summary, verify_run

    options = VerifyOptions(
        clock_skew_ms=args.clock_skew_ms,
        settle_timeout_s=args.settle_timeout,
        settle_quiet_s=args.settle_quiet,
        bucket_rows=args.bucket_rows,
    )
    overrides: dict[str, Any] = {}
    if args.mongo_url:
        overrides["mongo_url"] = args.mongo_url
    if args.mongo_db:
        overrides["mongo_db"] = args.mongo_db
    if overrides:
        settings = settings.with_overrides(**overrides)
    result = asyncio.run(
        verify_run(args.run_dir, settings, options, jtl=args.jtl, use_redis=not args.no_redis)
    )
    print_summary(result, sys.stdout)
    return 0 if result["verdict"] == "pass" else EXIT_VIOLATION


def report(args: argparse.Namespace, settings: Settings) -> int:
    from loadtest.report import build_report

    cloudwatch = None
    if args.cloudwatch:
        from loadtest.awsmetrics import fetch_for_run
        from loadtest.stack import stack_outputs

        outputs = stack_outputs(args.stack, args.outputs_file)
        cloudwatch = fetch_for_run(args.run_dir, outputs, settings)
    path = build_report(args.run_dir, output=args.output, jtl=args.jtl, cloudwatch=cloudwatch)
    print(path)
    return 0


def aws_run(args: argparse.Namespace, settings: Settings) -> int:
    from loadtest.aws import launch_from_args

    result = launch_from_args(args, settings)
    print(json.dumps(result, indent=2))
    return 0 if result.get("ok", True) else 1


def gather(args: argparse.Namespace, settings: Settings) -> int:
    from loadtest.aws import gather_run

    run_dir = gather_run(args.bucket, args.prefix, args.run_id, args.out_dir, settings.aws_region)
    print(run_dir)
    return 0


def local(args: argparse.Namespace, settings: Settings) -> int:
    from loadtest.local import run_local

    return run_local(args, settings)


def run_dir_arg(path: Path) -> Path:
    if not path.is_dir():
        raise SystemExit(f"{path} is not a run directory")
    return path
