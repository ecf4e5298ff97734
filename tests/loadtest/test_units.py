"""Pure logic of the generator: schedule, distributions, histograms, the in-flight
tracker, records, series, chat layout, configuration checks and the JMeter command."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import pytest

from loadtest import histograms, jtl
from loadtest.distributions import IntDistribution
from loadtest.jmeter import HTTP_PLAN, PlanRun, build_compat_agent, command, needs_compat_agent
from loadtest.provision import plan_chats
from loadtest.records import BULK, RecordWriter, iter_records
from loadtest.runner import RunConfig, check_config
from loadtest.schedule import RateSchedule
from loadtest.series import Series
from loadtest.tracker import Tracker
from tests.loadtest.fixtures import stats, write_jtl


def test_schedule_ramps_then_holds() -> None:
    """The due count is the integral of a linear ramp then a flat hold."""
    s = RateSchedule(rate=100, ramp_s=10, hold_s=20)
    assert s.rate_at(5) == 50
    assert s.rate_at(15) == 100
    assert s.rate_at(31) == 0
    assert s.due(10) == pytest.approx(500)
    assert s.due(30) == pytest.approx(2500)
    assert s.due(99) == s.due(30)
    assert s.total == 2500
    assert [s.phase(t) for t in (-1, 1, 11, 40)] == ["starting", "ramp", "hold", "drain"]
    assert s.share(0.25).total == 625
    assert RateSchedule(rate=10, ramp_s=0, hold_s=3).due(1.5) == pytest.approx(15)
    with pytest.raises(ValueError, match=">= 0"):
        RateSchedule(rate=-1, ramp_s=1, hold_s=1)


@pytest.mark.parametrize(
    ("spec", "allowed"),
    [("3", {3}), ("2-4", {2, 3, 4}), ("2:70,10:0,200:30", {2, 200})],
)
def test_distributions_sample_their_support(spec: str, allowed: set[int]) -> None:
    """Each spec samples only the values it describes (zero weights never)."""
    d = IntDistribution.parse(spec)
    rng = random.Random(3)
    assert {d.sample(rng) for _ in range(500)} == allowed


def test_lognormal_and_bad_specs() -> None:
    """lognormal samples around its median; malformed specs raise naming the spec."""
    d = IntDistribution.parse("lognormal:200:0.5")
    rng = random.Random(1)
    values = sorted(d.sample(rng) for _ in range(2001))
    assert 150 < values[1000] < 260
    assert d.maximum is None
    for bad in ("x", "5-2", "1:-1", "lognormal:0:1"):
        with pytest.raises(ValueError, match="bad distribution"):
            IntDistribution.parse(bad)


def test_latency_batch_matches_direct_recording() -> None:
    """Quantised batch recording gives the histogram's own percentiles (3 digits)."""
    rng = random.Random(7)
    values = [int(rng.lognormvariate(8, 1.5)) + 1 for _ in range(20_000)]
    direct, batched = histograms.new_histogram(), histograms.new_histogram()
    batch = histograms.LatencyBatch()
    for v in values:
        direct.record_value(v)
        batch.add(v)
    batch.drain_into(batched)
    assert len(batch) == 0
    for p in (50, 90, 99, 99.9, 100):
        a, b = direct.get_value_at_percentile(p), batched.get_value_at_percentile(p)
        assert abs(a - b) <= a * 0.001 + 1
    assert histograms.decode(histograms.encode(batched)).get_total_count() == 20_000
    assert histograms.encode(histograms.new_histogram()) == ""


def test_tracker_follows_a_send_to_its_record(tmp_path: Path) -> None:
    """send -> ack -> own message writes one complete row; an error, a timeout and a
    delivery that overtook its ack are recorded too; per-second counters reset."""
    writer = RecordWriter(tmp_path, "t")
    t = Tracker(writer, BULK, ack_timeout_s=1.0, deliver_timeout_s=1.0)
    t.on_send("a", 5, "{}", None, 1_000)
    t.on_ack("a", "m1", 1, 7, "bulk", 3_000_000)
    t.on_own_message("m1", 9_000_000)
    t.on_send("b", 5, "{}", None, 2_000)
    t.on_error("b", "rate_limited", 4_000)
    t.on_send("c", 5, "{}", None, 5_000)
    t.on_own_message("m3", 6_000_000)  # before its ack
    t.on_ack("c", "m3", 2, 8, "bulk", 7_000_000)
    t.on_send("d", 6, "{}", None, 10_000)
    t.on_ack(None, "ignored", 0, 0, "bulk", 10_001)
    t.sweep(2_000_000_000)  # d's ack is overdue
    second = t.take_second()
    assert (second["sent"], second["acked"], second["delivered"]) == (4, 2, 2)
    assert second["errors"] == {"rate_limited": 1, "timeout": 1}
    assert histograms.decode(second["e2e"]).get_total_count() == 2
    assert t.take_second()["sent"] == 0
    t.finish()
    rows = {r.client_id: r for r in iter_records(tmp_path)}
    assert rows["a"].deliver_ns == 9_000_000
    assert rows["a"].seq == 1
    assert rows["a"].acked
    assert rows["b"].error == "rate_limited"
    assert not rows["b"].acked
    assert rows["c"].deliver_ns == 6_000_000
    assert rows["d"].error == "timeout"


def test_series_round_trips_and_merges_with_offset() -> None:
    """Counters add and histograms merge; a later shard's seconds shift by its offset."""
    a = Series()
    a.add_stats("bulk", 0, stats(10, 10, [1.0] * 10, [2.0] * 10))
    a.add_stats("bulk", 0, stats(5, 4, [3.0] * 4, [4.0] * 4, errors={"x": 1}))
    merged = Series.from_json(a.to_json())
    merged.merge_json(a.to_json(), offset=2)
    assert merged.seconds[0].counts["bulk"]["sent"] == 15
    assert merged.seconds[2].errors == {"x": 1}
    assert merged.totals()["bulk"]["acked"] == 28
    assert merged.latency()["bulk"]["ack"]["count"] == 28


def test_chats_stay_inside_one_process_group() -> None:
    """Every chat's members belong to the process that sends to it, creator first."""
    plans = plan_chats(12, 9, 3, IntDistribution.parse("1-6"), seed=1)
    assert [p.process for p in plans] == [0, 1, 2] * 3
    for p in plans:
        assert all(m % 3 == p.process for m in p.member_indices)
        assert 1 <= len(p.member_indices) <= 4  # clipped to the group's 4 accounts
        assert len(set(p.member_indices)) == len(p.member_indices)


def test_config_check_flags_connection_floods() -> None:
    """A per-connection rate the gateway would close (1008) is reported with the fix."""
    cfg = RunConfig(target="http://x", rate=3000, ramp_s=1, hold_s=1, users=10, chats=10)
    (problem,) = check_config(cfg)
    assert "--users >= 21" in problem
    assert check_config(RunConfig(target="http://x", rate=3000, ramp_s=1, hold_s=1, users=40)) == []


def test_jtl_send_samples_become_records(tmp_path: Path) -> None:
    """202 samples carry the ack; a failed sample is an error row; other labels are skipped."""
    path = write_jtl(tmp_path / "r.jtl", start_ms=1_000_000, n=10)
    rows = list(jtl.records(path))
    assert len(rows) == 10
    assert jtl.chat_ids(path) == [5]
    ok = rows[0]
    assert (ok.id, ok.seq, ok.ts, ok.priority) == ("id-0", 1, 1_001_002, "bulk")
    assert ok.send_ns == 1_001_000 * 1_000_000
    assert ok.ack_ns == 1_001_004 * 1_000_000
    assert not rows[7].acked
    assert rows[7].error == "http_503"
    summary = jtl.summarize(path)
    assert summary["labels"]["send message"]["errors"] == 1
    assert summary["response_codes"] == {"503": 1}


def test_jmeter_command_passes_the_plan_properties(tmp_path: Path) -> None:
    """host/port/protocol come from the target URL; ramp and hold are whole seconds;
    the ack columns are requested as sample variables."""
    run = PlanRun(
        "https://gw.example:8443", 12.5, 1.2, 3.0, 4, 2, "r1", tmp_path / "x.jtl", tmp_path / "l"
    )
    argv = command(run, "jmeter")
    assert argv[:4] == ["jmeter", "-n", "-t", str(HTTP_PLAN)]
    for prop in (
        "-Jhost=gw.example",
        "-Jport=8443",
        "-Jprotocol=https",
        "-Jrate=12.5",
        "-Jramp=2",
        "-Jhold=3",
        "-Jsample_variables=chat_id,client_id,ack_id,ack_seq,ack_ts,ack_prio",
    ):
        assert prop in argv
    assert needs_compat_agent("2.13.19691222")
    assert not needs_compat_agent("5.6.3")


def test_compat_agent_builds(tmp_path: Path) -> None:
    """The JMeter 2.13 agent compiles into a jar naming its premain class."""
    jar = build_compat_agent(tmp_path)
    with zipfile.ZipFile(jar) as z:
        assert "Premain-Class: XStreamPermitAgent" in z.read("META-INF/MANIFEST.MF").decode()
        assert "xstream-wrapper.bin" in z.namelist()
