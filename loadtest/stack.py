"""Pulumi stack outputs (infra/program.py ``export``): read once, by command or file.

The outputs the load test uses: ``url``, ``region``, ``cluster``, ``services.<svc>.name``,
``loadtest.{task_definition, subnets, public_subnets, security_group}``, ``bucket`` and
``metrics_namespace``; optional ``alb_arn_suffix``, ``documentdb_id``, ``redis_id`` let
the report chart those tiers directly (else it uses CloudWatch SEARCH expressions).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any


def stack_outputs(stack: str | None, outputs_file: Path | None = None) -> dict[str, Any]:
    if outputs_file is not None:
        data: dict[str, Any] = json.loads(outputs_file.read_text())
        return data
    if stack is None:
        return {}
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise SystemExit("pulumi is not on PATH: pass --outputs-file (pulumi stack output --json)")
    out = subprocess.run(  # noqa: S603
        [pulumi, "stack", "output", "--json", "--show-secrets=false", "--stack", stack],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result
