"""``python -m loadtest local`` (``make loadtest``, ``make loadtest-jmeter``): the local
stack, a short run (generator or JMeter's HTTP plan), verify, report; prints the
report's path last.

The stack is :class:`chat.localstack.LocalStack` (embedded Redis/SecantusDB/SQLite unless
REDIS_URL/MONGO_URL/SQL_URL point at real servers), on a free gateway port unless
GATEWAY_PORT is set; ``--target`` uses an already running gateway instead (``make run``),
with the Redis/MongoDB of the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import uvloop

from chat.config import Settings, load_settings
from chat.localstack import LocalStack, free_port
from loadtest.commands import run_config
from loadtest.jmeter import PlanRun, run_plan
from loadtest.report import build_report
from loadtest.runner import new_run_id
from loadtest.runner import run as run_shard
from loadtest.verify import VerifyOptions
from loadtest.verifyrun import print_summary, verify_run


@contextlib.contextmanager
def stack_or_target(args: argparse.Namespace, settings: Settings) -> Iterator[tuple[str, Settings]]:
    if args.target:
        yield args.target.rstrip("/"), settings
        return
    env = {k: v for k, v in os.environ.items() if v != ""}  # make exports unset ones empty
    env.setdefault("GATEWAY_PORT", str(free_port()))
    stack = LocalStack(local_dir=args.local_dir, env=env, output=None)
    with stack.running():
        print(f"local stack up: {stack.gateway_url}", flush=True)
        yield stack.gateway_url, load_settings(stack.resolved)


def _jmeter(args: argparse.Namespace, target: str, run_dir: Path) -> Path:
    results = run_dir / "jmeter.jtl"
    plan = PlanRun(
        target=target,
        rate=args.rate,
        ramp_s=args.ramp,
        hold_s=args.hold,
        users=args.users,
        chats=max(1, args.chats // max(1, args.users)),
        run_id=run_dir.name,
        results=results,
        log=run_dir / "jmeter.log",
    )
    code = run_plan(plan, args.local_dir / "jmeter-compat", args.jmeter)
    if code != 0:
        raise SystemExit(f"jmeter exited with {code}; see {plan.log}")
    return results


def run_local(args: argparse.Namespace, settings: Settings) -> int:
    with stack_or_target(args, settings) as (target, stack_settings):
        jtl = None
        if args.tool == "jmeter":
            run_dir = args.out_dir / f"jmeter-{new_run_id()}"
            run_dir.mkdir(parents=True, exist_ok=True)
            jtl = _jmeter(args, target, run_dir)
        else:
            cfg = dataclasses.replace(run_config(args, target), run_id=new_run_id())
            code, run_dir = uvloop.run(run_shard(cfg, stack_settings))
            if code != 0:
                print(f"run failed (exit {code}); verifying what was recorded", flush=True)
        result = asyncio.run(verify_run(run_dir, stack_settings, VerifyOptions(), jtl=jtl))
    print_summary(result, sys.stdout)
    report = build_report(run_dir, jtl=jtl)
    print(f"report: {report}", flush=True)
    return 0 if result["verdict"] == "pass" else 1
