"""``python -m loadtest {run,verify,report,aws-run,gather,local}`` (docs/loadtest.md).

``main()`` reads the settings once (Redis, MongoDB, AWS region: the same environment
variables as the services) and passes them down; run profiles (rate, ramp, hold, sizes)
are command-line options because they describe a test, not a deployment.
"""

from __future__ import annotations

import argparse
import logging
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from chat.config import Settings, load_settings
from chat.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(".local/loadtest")


def _add_profile(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("profile")
    g.add_argument("--rate", type=float, default=200.0, help="target msg/s (this shard's total)")
    g.add_argument("--ramp", type=float, default=5.0, help="seconds from --start-rate to --rate")
    g.add_argument("--hold", type=float, default=15.0, help="seconds at --rate after the ramp")
    g.add_argument("--start-rate", type=float, default=0.0, help="msg/s at t=0")
    g.add_argument("--users", type=int, default=20, help="load accounts = WebSocket connections")
    g.add_argument("--chats", type=int, default=20, help="chats (fresh for every run)")
    g.add_argument("--chat-size", default="2", help="members per chat: N, A-B or N:w,M:w")
    g.add_argument(
        "--message-size", default="64-256", help="text bytes: N, A-B, N:w,… or lognormal:MED:SIGMA"
    )
    g.add_argument("--processes", type=int, default=1, help="generator processes (one per core)")
    g.add_argument("--transport", choices=("ws", "http"), default="ws", help="send route")
    g.add_argument("--probes", type=int, default=2, help="live probe users (human accounts)")
    g.add_argument("--probe-interval", type=float, default=1.0, help="seconds between probe sends")
    g.add_argument("--ack-timeout", type=float, default=30.0, help="seconds before a send is lost")
    g.add_argument("--drain", type=float, default=15.0, help="seconds to wait for acks at the end")
    g.add_argument("--seed", type=int, default=1)


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="drive the gateway at an open-loop rate and record everything")
    p.add_argument("--target", help="gateway base URL (default http://GATEWAY_HOST:GATEWAY_PORT)")
    _add_profile(p)
    p.add_argument("--run-id", default="", help="default: a new time-based id")
    p.add_argument("--shard", default="0/1", help="i/N: this task's part of a distributed run")
    p.add_argument("--start-at", type=float, help="wall-clock epoch seconds of t=0 (all shards)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--account-prefix", default="lt")
    p.add_argument("--password", default="loadtest-password")
    p.add_argument("--no-progress", action="store_true", help="plain log lines only")
    p.add_argument("--no-redis", action="store_true", help="do not sample REDIS_URL")
    p.add_argument("--upload", help="s3://bucket/prefix: upload the run directory afterwards")


def _add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help="check the run against MongoDB; exit 1 on any violation")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--jtl", type=Path, help="verify a JMeter results file instead of records")
    p.add_argument("--mongo-url", help="default MONGO_URL")
    p.add_argument("--mongo-db", help="default MONGO_DB")
    p.add_argument("--no-redis", action="store_true", help="skip the Redis seq-counter check")
    p.add_argument("--clock-skew-ms", type=int, default=5, help="ts window allowance")
    p.add_argument("--settle-timeout", type=float, default=60.0, help="max wait for persistence")
    p.add_argument("--settle-quiet", type=float, default=10.0, help="give up after no progress")
    p.add_argument("--bucket-rows", type=int, default=2_000_000, help="rows joined at once")


def _add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="write one self-contained HTML report")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--jtl", type=Path, help="JMeter results to include")
    p.add_argument("-o", "--output", type=Path, help="default RUN_DIR/report.html")
    p.add_argument("--cloudwatch", action="store_true", help="fetch AWS metrics of the run")
    p.add_argument("--stack", help="Pulumi stack whose outputs name the AWS resources")
    p.add_argument("--outputs-file", type=Path, help="stack outputs as JSON (instead of pulumi)")


def _add_aws(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("aws-run", help="start N generator tasks on ECS for one run")
    p.add_argument("--stack", help="Pulumi stack to read the outputs from")
    p.add_argument("--outputs-file", type=Path, help="stack outputs as JSON")
    p.add_argument("--cluster")
    p.add_argument("--task-definition")
    p.add_argument("--container", help="container name in the task definition")
    p.add_argument("--subnets", help="comma-separated subnet ids")
    p.add_argument("--security-groups", help="comma-separated security group ids")
    p.add_argument("--bucket", help="S3 bucket for the results")
    p.add_argument("--target", help="gateway URL seen from the tasks (default: stack output)")
    p.add_argument("--tasks", type=int, required=True)
    p.add_argument("--start-delay", type=float, default=180.0, help="seconds until t=0")
    p.add_argument("--wait", action="store_true", help="wait for the tasks, then gather")
    p.add_argument("--run-id", default="")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    _add_profile(p)

    g = sub.add_parser("gather", help="download and merge a distributed run's results")
    g.add_argument("--bucket", required=True)
    g.add_argument("--run-id", required=True)
    g.add_argument("--prefix", default="loadtest")
    g.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)


def _add_local(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("local", help="local stack + run (or JMeter) + verify + report")
    p.add_argument("--tool", choices=("generator", "jmeter"), default="generator")
    p.add_argument("--local-dir", type=Path, default=Path(".local"))
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--target", help="use this running gateway instead of starting a stack")
    p.add_argument("--jmeter", default="jmeter", help="JMeter binary")
    _add_profile(p)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    p.add_argument("--check", action="store_true", help="exit 0 if the gateway is healthy")
    p.add_argument("--target-check", help="gateway URL for --check")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command")
    _add_run(sub)
    _add_verify(sub)
    _add_report(sub)
    _add_aws(sub)
    _add_local(sub)
    return p


def default_target(settings: Settings) -> str:
    """LOADTEST_TARGET_URL when set (the ECS task), else the local gateway."""
    if settings.loadtest_target_url:
        return settings.loadtest_target_url
    return f"http://{settings.gateway_host}:{settings.gateway_port}"


def check(url: str) -> int:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=5) as resp:  # noqa: S310
            return 0 if resp.status == 200 else 1
    except OSError:
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        settings = load_settings()
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.check:
        return check(args.target_check or default_target(settings))
    if args.command is None:
        parser().print_help()
        return 2
    from loadtest import commands

    handler = getattr(commands, args.command.replace("-", "_"))
    code: int = handler(args, settings)
    return code
