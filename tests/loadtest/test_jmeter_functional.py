"""Debian's stock JMeter runs the HTTP plan for a few seconds against the local stack;
its results verify against MongoDB and feed the report."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from loadtest import jtl
from loadtest.jmeter import HTTP_PLAN, PlanRun, run_plan
from loadtest.report import build_report
from loadtest.verify import VerifyOptions
from loadtest.verifyrun import verify_run
from tests import setup_env
from tests.conftest import UNIT
from tests.loadtest.conftest import RunningStack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def jmeter_binary() -> str:
    """JMeter on PATH, installed with apt-get (tests.setup_env) when missing."""
    if shutil.which("jmeter") is None or not Path(next(iter(setup_env.NEEDED_FILES))).exists():
        setup_env.main()
    found = shutil.which("jmeter")
    if found is None:
        pytest.fail("jmeter is not installed and could not be installed (run as root)")
    return found


async def test_http_plan_runs_on_debian_jmeter_and_verifies(
    stack: RunningStack, jmeter_binary: str, tmp_path: Path
) -> None:
    """The HTTP plan parses and runs ~5 s at 40 msg/s: every send sample is a 202 whose
    ack (saved as sample variables) is stored in MongoDB with that seq and ts."""
    plan = PlanRun(
        target=stack.url,
        rate=40.0,
        ramp_s=1.0,
        hold_s=4.0,
        users=3,
        chats=2,
        run_id="jmtest",
        results=tmp_path / "run" / "jmeter.jtl",
        log=tmp_path / "jmeter.log",
        plan=HTTP_PLAN,
    )
    code = await asyncio.to_thread(run_plan, plan, tmp_path / "compat", jmeter_binary, 180 * UNIT)
    assert code == 0, plan.log.read_text()[-3000:]
    summary = jtl.summarize(plan.results)
    sends = summary["labels"][jtl.SEND_LABEL]
    assert sends["count"] >= 100, summary
    assert sends["errors"] == 0, summary["response_codes"]
    assert summary["labels"]["create chat"]["count"] == 6

    run_dir = tmp_path / "run"
    result = await verify_run(
        run_dir, stack.settings, VerifyOptions(settle_timeout_s=60 * UNIT), jtl=plan.results
    )
    assert result["verdict"] == "pass", (result["violations"], result["examples"])
    assert result["counts"]["persisted"] == sends["count"]
    html = build_report(run_dir, jtl=plan.results).read_text()
    assert "JMeter send samples per second" in html
