"""``audit --user`` over a full audit stream (issue 9, item 7).

Filtering reads the stream newest first until enough entries match. A rare user's entries may lie
behind the whole stream (about AUDIT_MAX_ENTRIES entries); read in one call under one
STORE_TIMEOUT that timed out and said "Redis unreachable". It is paged: one bounded call per
chunk, each well under the timeout.
"""

from __future__ import annotations

import json

from ratelimit.audit import AUDIT_MAX_ENTRIES, AuditTrail
from ratelimit.store import KeyLayout, Store
from smtp_whitelist.settings import Settings
from tests.support import RedisServer, clean_env, run_cli

RARE = 3

# Fills the stream in one server-side loop: the rare user's grants first (oldest), then the
# rest of a full stream for another user.
_FILL = """
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'event', 'grant', 'ip', '192.0.2.' .. (i % 250 + 1),
             'user', 'rare', 'role', 'staff', 'status', 'normal', 'source', 'webhook')
end
for i = 1, tonumber(ARGV[2]) do
  redis.call('XADD', KEYS[1], '*', 'event', 'grant', 'ip', '198.51.100.' .. (i % 250 + 1),
             'user', 'busy', 'role', 'student', 'status', 'normal', 'source', 'webhook')
end
return redis.call('XLEN', KEYS[1])
"""


def _fill(redis: RedisServer) -> None:
    length = redis.cli(
        "EVAL",
        _FILL,
        "1",
        KeyLayout("swl:").audit("192.0.2.0/24"),
        str(RARE),
        str(AUDIT_MAX_ENTRIES),
    )
    assert int(length) == AUDIT_MAX_ENTRIES + RARE


async def test_a_filter_over_a_full_stream_is_read_in_bounded_calls(
    redis_server: RedisServer,
) -> None:
    _fill(redis_server)
    # One chunk of the stream is read and parsed in milliseconds, far within this timeout; the
    # whole stream (a hundred chunks) under one timeout is not.
    store = Store.from_settings(Settings(redis_url=redis_server.url, store_timeout=0.2))
    try:
        await store.ping()
        entries = await AuditTrail(store).read(user="rare")
    finally:
        await store.aclose()
    assert [(e.user, e.ip) for e in entries] == [
        ("rare", "192.0.2.2"),
        ("rare", "192.0.2.3"),
        ("rare", "192.0.2.4"),
    ]


def test_audit_of_a_rare_user_from_the_command_line(redis_server: RedisServer) -> None:
    _fill(redis_server)
    env = clean_env(redis_url=redis_server.url, store_timeout="0.2")
    result = run_cli("audit", "--user", "rare", "--json", env=env)
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)["items"]
    assert [item["user"] for item in items] == ["rare"] * RARE
