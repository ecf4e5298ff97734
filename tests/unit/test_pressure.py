"""DbShare: the worker's AIMD share of the database while live inserts are slow."""

from __future__ import annotations

import pytest

from chat.pressure import DbShare


def test_a_new_share_is_the_whole_database_and_never_delays() -> None:
    """Without readings the worker keeps the writer: no insert is held back."""
    share = DbShare(target_ms=5, min_share=0.2)
    assert share.share == 1.0
    share.inserted(10.0, 10.050)
    assert share.delay(10.050) == 0.0


def test_over_target_decreases_multiplicatively_down_to_the_floor() -> None:
    """Each reading over target multiplies the share by `decrease`, never below min_share."""
    share = DbShare(target_ms=5, min_share=0.2, decrease=0.5)
    assert [share.update(9.0) for _ in range(4)] == [0.5, 0.25, 0.2, 0.2]
    assert share.live_ms == 9.0


def test_at_or_under_target_increases_additively_up_to_one() -> None:
    """Readings at or under target give the share back in `increase` steps."""
    share = DbShare(target_ms=5, min_share=0.2, decrease=0.5, increase=0.1, share=0.5)
    assert share.update(5.0) == pytest.approx(0.6)
    assert share.update(1.0) == pytest.approx(0.7)
    for _ in range(10):
        share.update(1.0)
    assert share.share == 1.0


def test_no_report_recovers_faster_than_a_good_one() -> None:
    """No live traffic (no reading) returns the writer to bulk in `recover` steps."""
    share = DbShare(target_ms=5, min_share=0.2, increase=0.05, recover=0.25, share=0.25)
    assert share.update(None) == pytest.approx(0.5)
    assert share.live_ms is None
    assert share.update(None) == pytest.approx(0.75)
    assert share.update(None) == 1.0
    assert share.update(None) == 1.0


@pytest.mark.parametrize(("s", "idle_factor"), [(0.5, 1.0), (0.25, 3.0), (0.2, 4.0)])
def test_the_next_insert_waits_so_the_writer_idles_its_share(s: float, idle_factor: float) -> None:
    """After an insert of d seconds at share s the next may start d*(1-s)/s later."""
    share = DbShare(target_ms=5, min_share=0.2, share=s)
    share.inserted(100.0, 100.020)
    assert share.delay(100.020) == pytest.approx(0.020 * idle_factor)
    assert share.delay(100.020 + 0.005) == pytest.approx(0.020 * idle_factor - 0.005)
    assert share.delay(101.0) == 0.0  # long enough ago


def test_the_delay_follows_the_share_at_the_time_of_the_insert() -> None:
    """A share that changes after an insert applies from the next insert on."""
    share = DbShare(target_ms=5, min_share=0.2, decrease=0.5)
    share.inserted(0.0, 0.010)
    share.update(50.0)  # share 0.5 now
    assert share.delay(0.010) == 0.0
    share.inserted(0.010, 0.020)
    assert share.delay(0.020) == pytest.approx(0.010)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"target_ms": 0, "min_share": 0.2}, "target_ms"),
        ({"target_ms": 5, "min_share": 0}, "min_share"),
        ({"target_ms": 5, "min_share": 1.5}, "min_share"),
        ({"target_ms": 5, "min_share": 0.2, "decrease": 1.0}, "decrease"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, float], error: str) -> None:
    """A share that could never yield, or never recover, is a configuration error."""
    with pytest.raises(ValueError, match=error):
        DbShare(**kwargs)
