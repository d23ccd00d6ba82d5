"""decide.lua's running sums: every answer is the one a walk of the client's entries gives.

The script keeps, in the client's log, the recipients and messages of its entries and the moment
its TTL was set (members ``0:t``, ``0:c``, ``0:e``, scored below zero), so a limit whose window
is the longest needs no walk of the window. These tests drive the script itself, with the
daemon's own arguments, against a real redis-server, and compare every answer with a model that
walks the entries: through time passing (entries rewritten older, as the clock would make them),
a shorter window beside the longest, several decisions of one client in one call, and a log that
an earlier version of the script wrote (which trims the sums away with the stale entries).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimit.keys import KeyLayout
from tests.support import RedisServer

DECIDE = (Path(__file__).parent.parent / "ratelimit" / "lua" / "decide.lua").read_text()
US = 1_000_000
HOUR, TEN_MINUTES = 3600 * US, 600 * US
KEYS = KeyLayout("sums:")
CLIENTS = ("192.0.2.1", "192.0.2.2")
ACCEPTED, MESSAGES, RECIPIENTS, USAGE = 0, 2, 3, 4
SUMS = ["0:t", "0:c", "0:e"]  # recipients, messages, the TTL's moment


def log_key(client: str) -> str:
    return KEYS.client_log(f"{client}/32")


@dataclass
class Limits:
    messages: list[tuple[int, int]]  # (count, window in µs)
    recipients: list[tuple[int, int]]

    def shared(self) -> list[int]:
        args = [len(self.messages)]
        for count, window in self.messages:
            args += [count, window]
        args.append(len(self.recipients))
        for count, window in self.recipients:
            args += [count, window]
        return [*args, 1000]  # OFFENDER_THRESHOLD: never reached here

    @property
    def longest(self) -> int:
        return max(w for _, w in self.messages + self.recipients)


@dataclass
class Model:
    """A client's entries as (time in µs, recipients), judged by walking them."""

    entries: list[tuple[int, int]] = field(default_factory=list)

    def inside(self, now: int, window: int) -> list[tuple[int, int]]:
        return [(at, n) for at, n in self.entries if at >= now - window]

    def count(self, limits: Limits, now: int, rcpts: int) -> Reply:
        self.entries = self.inside(now, limits.longest)  # the trim
        for i, (limit, window) in enumerate(limits.messages, 1):
            used = len(self.inside(now, window))
            if used + 1 > limit:
                return [MESSAGES, i, used, 0]  # 0: OFFENDER_THRESHOLD never met
        for j, (limit, window) in enumerate(limits.recipients, 1):
            used = sum(n for _, n in self.inside(now, window))
            if used + rcpts > limit:
                return [RECIPIENTS, j, used, 0]
        self.entries.append((now, rcpts))
        return ACCEPTED

    def check(self, limits: Limits, now: int) -> Reply:
        for i, (limit, window) in enumerate(limits.messages, 1):
            used = len(self.inside(now, window))
            if used >= limit:
                return [MESSAGES, i, used, 0]  # 0: OFFENDER_THRESHOLD never met
        return ACCEPTED

    def usage(self, limits: Limits, now: int) -> list[int]:
        return (
            [USAGE]
            + [len(self.inside(now, w)) for _, w in limits.messages]
            + [sum(n for _, n in self.inside(now, w)) for _, w in limits.recipients]
        )


def now_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * US + int(micros)


Reply = int | list[int]  # decide.lua's: a bare code when accepted, else a list


def decide(
    client: redis.Redis, limits: Limits, decisions: list[tuple[str, str, int]]
) -> list[Reply]:
    """One script call deciding ``decisions`` (client, mode, recipients) in order."""
    keys: list[str] = []
    args: list[str | int] = []
    for who, mode, rcpts in decisions:
        keys += [log_key(who), KEYS.grant(who, f"{who}/32"), KEYS.offender(who, f"{who}/32")]
        args += [mode, rcpts]
    replies = cast(list[Reply], client.eval(DECIDE, len(keys), *keys, *limits.shared(), *args))
    return [r if isinstance(r, int) else [int(x) for x in r] for r in replies]


def entry_members(client: redis.Redis, who: str) -> list[bytes]:
    """The log's entries (members scored 0 or more), oldest first."""
    return cast(list[bytes], client.zrange(log_key(who), 0, "+inf", byscore=True))


def age_entries(client: redis.Redis, who: str, members: list[bytes], to: int) -> None:
    """Rewrite entries' times, as the clock passing would make them."""
    if members:
        client.zadd(log_key(who), dict.fromkeys(members, to), xx=True)


def stored_entries(client: redis.Redis, who: str) -> list[tuple[int, int]]:
    members = cast(
        list[tuple[bytes, float]],
        client.zrange(log_key(who), 0, "+inf", byscore=True, withscores=True),
    )
    return sorted((int(score), int(member.split(b":")[0])) for member, score in members)


def assert_sums_hold(client: redis.Redis, who: str) -> None:
    """Where the sums are kept, they are the entries' own, and the TTL is the one recorded."""
    key = log_key(who)
    sums = client.zmscore(key, SUMS)
    if sums == [None, None, None]:
        return
    recipients, messages, expires = (int(score or 0) for score in sums)
    assert None not in sums, sums  # all three or none
    entries = stored_entries(client, who)
    assert -1 - recipients == sum(n for _, n in entries)
    assert -1 - messages == len(entries)
    assert client.pexpiretime(key) == math.ceil(-expires / 1000)


def ages(entries: list[tuple[int, int]], now: int) -> list[tuple[str, int]]:
    """Entries as (age, recipients): the model's clock is read beside the script's, not in it."""
    named = []
    for at, rcpts in entries:
        age = "fresh" if at >= now - TEN_MINUTES else "mid" if at >= now - HOUR else "stale"
        named.append((age, rcpts))
    return sorted(named)


@pytest.fixture
def direct(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


limit_counts = st.integers(1, 6)
recipient_counts = st.integers(1, 12)


@st.composite
def limit_sets(draw: st.DrawFn) -> Limits:
    """The longest window always; a shorter one beside it, for messages or recipients, or not."""
    messages = [(draw(limit_counts), HOUR)]
    recipients = [(draw(recipient_counts), HOUR)]
    if draw(st.booleans()):
        messages.append((draw(limit_counts), TEN_MINUTES))
    if draw(st.booleans()):
        recipients.insert(0, (draw(recipient_counts), TEN_MINUTES))
    return Limits(messages, recipients)


steps = st.lists(
    st.one_of(
        # one script call: one or more decisions, each for either client
        st.lists(
            st.tuples(
                st.sampled_from(CLIENTS),
                st.sampled_from(["count", "count", "count", "check", "usage"]),
                st.integers(0, 4),
            ),
            min_size=1,
            max_size=4,
        ),
        # time passes for some entries: 30 minutes (out of the short window) or 2 hours (stale)
        st.tuples(st.just("age"), st.sampled_from(CLIENTS), st.integers(0, 5), st.booleans()),
        # a DATA decided by the previous version of the script
        st.tuples(st.just("earlier version"), st.sampled_from(CLIENTS), st.integers(0, 4)),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(limits=limit_sets(), script=steps)
def test_every_answer_is_what_a_walk_of_the_entries_gives(
    direct: redis.Redis, limits: Limits, script: list[Any]
) -> None:
    direct.flushdb()
    models = {who: Model() for who in CLIENTS}
    for step in script:
        if isinstance(step, list):
            replies = decide(direct, limits, step)
            now = now_us(direct)  # the call's TIME is within this run's millisecond or so
            for (who, mode, rcpts), reply in zip(step, replies, strict=True):
                model = models[who]
                if mode == "count":
                    expected = model.count(limits, now, rcpts)
                elif mode == "check":
                    expected = model.check(limits, now)
                else:
                    expected = model.usage(limits, now)
                assert reply == expected, (step, who, mode)
        elif step[0] == "age":
            _, who, oldest, stale = step
            now = now_us(direct)
            model = models[who]
            aged = sorted(model.entries)[:oldest]
            to = now - (2 * HOUR if stale else 30 * 60 * US)
            age_entries(direct, who, entry_members(direct, who)[: len(aged)], to)
            model.entries = [(to, n) for _, n in aged] + sorted(model.entries)[len(aged) :]
        else:
            _, who, rcpts = step
            # What the previous decide.lua did on an accepted DATA: trim below the longest
            # window (the sums, scored below zero, go too), add the entry, PEXPIRE.
            key = log_key(who)
            now = now_us(direct)
            direct.zremrangebyscore(key, "-inf", f"({now - limits.longest}")
            direct.zadd(key, {f"{rcpts}:{now}": now}, nx=True)
            direct.pexpire(key, limits.longest // 1000 + 1000)
            model = models[who]
            model.entries = [*model.inside(now, limits.longest), (now, rcpts)]
        now = now_us(direct)
        for who in CLIENTS:
            assert_sums_hold(direct, who)
            assert ages(stored_entries(direct, who), now) == ages(models[who].entries, now)


def test_a_new_client_gets_its_sums_and_a_ttl_past_its_newest_entry(direct: redis.Redis) -> None:
    limits = Limits([(100, HOUR)], [(1000, HOUR)])
    who = CLIENTS[0]
    assert decide(direct, limits, [(who, "count", 3), (who, "count", 2)]) == [0] * 2
    key = log_key(who)
    recipients, messages, expires = direct.zmscore(key, SUMS)
    assert (recipients, messages) == (-6.0, -3.0)  # -1 - 5 recipients, -1 - 2 messages
    newest = max(at for at, _ in stored_entries(direct, who))
    assert expires is not None
    assert direct.pexpiretime(key) * 1000 >= newest + HOUR
    # At most a minute's more life than the newest entry needs.
    assert direct.pexpiretime(key) * 1000 <= newest + HOUR + 60 * US + 1000


def test_the_ttl_is_renewed_only_when_an_entry_would_outlive_it(direct: redis.Redis) -> None:
    limits = Limits([(100, HOUR)], [(1000, HOUR)])
    who = CLIENTS[0]
    key = log_key(who)
    decide(direct, limits, [(who, "count", 1)])
    first = direct.pexpiretime(key)
    decide(direct, limits, [(who, "count", 1)])
    assert direct.pexpiretime(key) == first  # still covers the new entry: not renewed
    # As if the TTL was set a minute and more ago: the next entry needs a later one.
    direct.zadd(key, {"0:e": -(first * 1000 - 61 * US)}, xx=True)
    direct.pexpireat(key, first - 61_000)
    decide(direct, limits, [(who, "count", 1)])
    newest = max(at for at, _ in stored_entries(direct, who))
    assert direct.pexpiretime(key) * 1000 >= newest + HOUR
    assert_sums_hold(direct, who)


def test_a_refusal_after_a_trim_leaves_the_sums_exact(direct: redis.Redis) -> None:
    """A refused DATA adds nothing, but its trim took entries: the sums lose them too."""
    limits = Limits([(2, HOUR)], [(1000, HOUR)])
    who = CLIENTS[0]
    key = log_key(who)
    assert decide(direct, limits, [(who, "count", 4)] * 2) == [0] * 2
    age_entries(direct, who, entry_members(direct, who)[:1], now_us(direct) - 2 * HOUR)
    # One entry went stale and is trimmed; one plus the new one is at the limit of two: accepted.
    assert decide(direct, limits, [(who, "count", 1)]) == [0]
    # Now two in the window: the third is refused, after a trim that took nothing.
    reply = decide(direct, limits, [(who, "count", 1)])
    assert reply == [[MESSAGES, 1, 2, 0]]
    # Age both: the refusal's trim takes them, and the sums follow although nothing is added.
    limits_one = Limits([(0, HOUR)], [(1000, HOUR)])
    age_entries(direct, who, entry_members(direct, who), now_us(direct) - 2 * HOUR)
    reply = decide(direct, limits_one, [(who, "count", 1)])
    assert reply == [[MESSAGES, 1, 0, 0]]
    assert stored_entries(direct, who) == []
    assert direct.zmscore(key, SUMS[:2]) == [-1.0, -1.0]  # nothing left, and the sums say so
    assert_sums_hold(direct, who)


def test_a_shorter_window_is_counted_apart_from_the_sums(direct: redis.Redis) -> None:
    limits = Limits([(5, HOUR), (2, TEN_MINUTES)], [(1000, HOUR), (3, TEN_MINUTES)])
    who = CLIENTS[0]
    assert decide(direct, limits, [(who, "count", 1)] * 2) == [0] * 2
    age_entries(direct, who, entry_members(direct, who), now_us(direct) - 30 * 60 * US)
    # Two in the hour, none in the last ten minutes: both short limits have room again.
    assert decide(direct, limits, [(who, "count", 3)]) == [0]
    assert decide(direct, limits, [(who, "count", 1)]) == [[RECIPIENTS, 2, 3, 0]]
    assert decide(direct, limits, [(who, "count", 0)]) == [0]
    assert decide(direct, limits, [(who, "count", 0)]) == [[MESSAGES, 2, 2, 0]]
    assert decide(direct, limits, [(who, "usage", 0)]) == [[USAGE, 4, 2, 5, 3]]
    assert_sums_hold(direct, who)


def test_a_log_an_earlier_version_wrote_is_summed_again(direct: redis.Redis) -> None:
    """The previous script trims everything below the window, the sums too: the next decision
    rebuilds them from the entries, here with two equal decisions in the call that does."""
    limits = Limits([(100, HOUR)], [(1000, HOUR)])
    who = CLIENTS[0]
    key = log_key(who)
    decide(direct, limits, [(who, "count", 2)])
    now = now_us(direct)
    direct.zremrangebyscore(key, "-inf", f"({now - HOUR}")  # as the previous script did
    direct.zadd(key, {f"5:{now}": now}, nx=True)
    assert direct.zmscore(key, SUMS) == [None, None, None]
    assert decide(direct, limits, [(who, "count", 1)] * 2) == [0] * 2
    assert sorted(n for _, n in stored_entries(direct, who)) == [1, 1, 2, 5]
    assert direct.zmscore(key, SUMS[:2]) == [-10.0, -5.0]
    assert_sums_hold(direct, who)


def test_a_reader_that_takes_every_member_for_an_entry_counts_the_same(
    direct: redis.Redis,
) -> None:
    """An earlier version's `show` reads the whole log as entries (recipients:time, scored by
    time): the sums parse as entries of no recipients, at times no window reaches."""
    limits = Limits([(100, HOUR)], [(1000, HOUR)])
    who = CLIENTS[0]
    decide(direct, limits, [(who, "count", 3), (who, "count", 2)])
    everything = cast(
        list[tuple[bytes, float]], direct.zrange(log_key(who), 0, -1, withscores=True)
    )
    assert len(everything) == 5  # two entries and the three sums
    as_entries = [(int(score), int(member.split(b":", 1)[0])) for member, score in everything]
    now = now_us(direct)
    inside = [(at, n) for at, n in as_entries if at >= now - HOUR]
    assert sorted(n for _, n in inside) == [2, 3]
