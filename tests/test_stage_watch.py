"""The RCPT-without-DATA warning: pure logic, driven with an explicit clock."""

from __future__ import annotations

import logging

import pytest

from policyd.stage_watch import WARNING_TEXT, StageWatch


def feed_rcpt(watch: StageWatch, start: float, count: int, step: float) -> list[str | None]:
    """``count`` RCPT requests, ``step`` seconds apart from ``start``; what observe said."""
    return [watch.observe("RCPT", start + i * step) for i in range(count)]


def test_warns_after_window_of_rcpt_only() -> None:
    watch = StageWatch(window_seconds=60, min_rcpt=5)
    said = feed_rcpt(watch, 1000.0, 10, 10.0)  # 0 .. 90 s
    warnings = [(i, s) for i, s in enumerate(said) if s is not None]
    # Due at the first request at or past the window (t=60 s, the 7th request), not before.
    assert warnings == [(6, f"{WARNING_TEXT} (7 RCPT requests in 60 s)")]


def test_text_names_the_fix() -> None:
    assert "smtpd_data_restrictions" in WARNING_TEXT
    assert "postfix-snippet.cf" in WARNING_TEXT
    assert WARNING_TEXT.startswith("no DATA-stage policy requests: nothing is being counted")


def test_no_warning_when_data_requests_come() -> None:
    watch = StageWatch(window_seconds=60, min_rcpt=5)
    now = 0.0
    for _ in range(100):  # 100 messages, 3 recipients each, over 1000 s
        for _ in range(3):
            assert watch.observe("RCPT", now) is None
        assert watch.observe("DATA", now) is None
        now += 10
    assert watch.data_seen


def test_bdat_counts_as_data() -> None:
    watch = StageWatch(window_seconds=10, min_rcpt=1)
    watch.observe("RCPT", 0.0)
    assert watch.observe("BDAT", 5.0) is None
    assert watch.observe("RCPT", 12.0) is None  # the watch restarted at the BDAT


def test_not_before_min_rcpt_even_after_long_time() -> None:
    # A scanner trying two RCPTs an hour apart is no evidence of a broken configuration.
    watch = StageWatch(window_seconds=60, min_rcpt=5)
    assert feed_rcpt(watch, 0.0, 4, 3600.0) == [None] * 4
    assert (watch.observe("RCPT", 5 * 3600.0) or "").startswith(WARNING_TEXT)


def test_once_until_a_data_request() -> None:
    watch = StageWatch(window_seconds=60, min_rcpt=2)
    said = feed_rcpt(watch, 0.0, 200, 1.0)  # 200 s of RCPT, one a second
    assert [i for i, s in enumerate(said) if s is not None] == [60]
    watch.observe("DATA", 200.0)  # fixed; then broken again: warned again
    said = feed_rcpt(watch, 201.0, 200, 1.0)
    assert [i for i, s in enumerate(said) if s is not None] == [60]


def test_first_client_over_its_message_limit_is_the_evidence() -> None:
    """With MESSAGE_LIMITS=3/1h, the 4th message passing RCPT with no DATA request at all."""
    watch = StageWatch()  # the fallback rule would need 20 RCPTs over 600 s
    watch.set_limits(3, None)
    said = [
        watch.observe("RCPT", float(i), client="192.0.2.7", instance=f"m{i // 2}")
        for i in range(8)  # 4 messages of 2 recipients each, within 8 s
    ]
    assert said[:6] == [None] * 6
    assert said[6] is not None
    assert said[6].startswith(WARNING_TEXT)
    assert "client 192.0.2.7 passed RCPT for 4 messages, over its limit of 3" in said[6]
    assert said[7] is None  # once


def test_recipient_limit_evidence_and_other_clients_apart() -> None:
    watch = StageWatch()
    watch.set_limits(None, 5)
    for _ in range(5):  # two clients, five recipients each: at, not over, the limit
        assert watch.observe("RCPT", 0.0, client="a", instance="x") is None
        assert watch.observe("RCPT", 0.0, client="b", instance="y") is None
    warning = watch.observe("RCPT", 1.0, client="a", instance="x")
    assert warning is not None
    assert "client a passed RCPT for 6 recipients, over its limit of 5" in warning


def test_a_data_request_clears_the_client_evidence() -> None:
    watch = StageWatch()
    watch.set_limits(3, None)
    for i in range(3):
        watch.observe("RCPT", 0.0, client="a", instance=f"m{i}")
    watch.observe("DATA", 0.0)
    for i in range(3):
        assert watch.observe("RCPT", 0.0, client="a", instance=f"n{i}") is None


def test_data_resets_the_watch() -> None:
    watch = StageWatch(window_seconds=60, min_rcpt=2)
    feed_rcpt(watch, 0.0, 50, 1.0)
    assert watch.observe("DATA", 50.0) is None
    # A new window starts at the next RCPT: nothing until 60 s after it.
    said = feed_rcpt(watch, 51.0, 60, 1.0)
    assert all(s is None for s in said)
    assert (watch.observe("RCPT", 111.0) or "").startswith(WARNING_TEXT)


def test_refused_rcpt_is_not_evidence() -> None:
    # A client at its limit is refused at RCPT and never reaches DATA, whatever the config.
    watch = StageWatch(window_seconds=60, min_rcpt=2)
    for i in range(500):
        assert watch.observe("RCPT", float(i), refused=True) is None


def test_other_stages_ignored_and_case_insensitive() -> None:
    watch = StageWatch(window_seconds=10, min_rcpt=1)
    for i, stage in enumerate(["CONNECT", "EHLO", "MAIL", "END-OF-MESSAGE", "VRFY"] * 10):
        assert watch.observe(stage, float(i)) is None
    watch.observe("rcpt", 100.0)
    assert (watch.observe("rcpt", 110.0) or "").startswith(WARNING_TEXT)


def test_logs_through_module_logger_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    watch = StageWatch(window_seconds=10, min_rcpt=1, log_warnings=True)
    with caplog.at_level(logging.WARNING, logger="policyd.stage_watch"):
        watch.observe("RCPT", 0.0)
        watch.observe("RCPT", 10.0)
        watch.observe("RCPT", 11.0)
    records = [r for r in caplog.records if r.name == "policyd.stage_watch"]
    assert len(records) == 1
    assert WARNING_TEXT in records[0].getMessage()
    assert "2 RCPT requests in 10 s" in records[0].getMessage()


def test_silent_by_default(caplog: pytest.LogCaptureFixture) -> None:
    watch = StageWatch(window_seconds=10, min_rcpt=1)
    with caplog.at_level(logging.DEBUG):
        watch.observe("RCPT", 0.0)
        assert (watch.observe("RCPT", 10.0) or "").startswith(WARNING_TEXT)
    assert not caplog.records


@pytest.mark.parametrize(("window", "minimum"), [(0, 1), (-1, 1), (10, 0)])
def test_rejects_nonsense(window: float, minimum: int) -> None:
    with pytest.raises(ValueError, match="must"):
        StageWatch(window_seconds=window, min_rcpt=minimum)
