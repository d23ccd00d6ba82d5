"""Settings validation: good values are read, each bad one is one plain line naming it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ratelimit.connections import HaUrl, parse_redis_url
from ratelimit.limits import Limit
from ratelimit.listen import ListenAddress, parse_listen
from smtp_whitelist.settings import DEFAULT_LIMIT_REPLY, SettingsError, load_settings

PREFIX = "SMTP_WHITELIST_"
SECRET = "s3cret-" + "x" * 40


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting of the machine running the tests may leak into these."""
    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings(None)
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.key_prefix == "swl:"
    assert settings.policy_listen == (ListenAddress("127.0.0.1", 10031, None),)
    assert settings.message_limits == (Limit(100, 3600),)
    assert settings.recipient_limits == (Limit(1000, 3600),)
    assert (settings.ipv4_prefix, settings.ipv6_prefix) == (32, 64)
    assert settings.exempt_networks == ()
    assert settings.limit_reply == DEFAULT_LIMIT_REPLY
    assert settings.store_timeout == 0.5
    assert settings.max_connections == 1000
    assert (settings.idle_timeout, settings.request_timeout) == (600, 10)
    assert settings.on_store_error == "DUNNO"
    assert settings.webhook_secret is None
    assert (settings.log_level, settings.log_format) == ("INFO", "text")


def test_good_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "REDIS_URL": "unix:///run/redis/redis.sock",
        "KEY_PREFIX": "relay1:",
        "POLICY_LISTEN": "127.0.0.1:10031, [::1]:10031, unix:/run/swl/policy.sock",
        "MESSAGE_LIMITS": "20/1m,100/1h",
        "RECIPIENT_LIMITS": "",
        "IPV4_PREFIX": "24",
        "IPV6_PREFIX": "56",
        "EXEMPT_NETWORKS": "10.0.0.0/8,2001:db8::/32",
        "LIMIT_REPLY": "421 4.7.0 {ip}: {limit} per {window}",
        "STORE_TIMEOUT": "0.25",
        "ON_STORE_ERROR": "451 4.3.0 try later",
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "JSON",
        "WEBHOOK_SECRET": SECRET,
    }
    for name, value in values.items():
        monkeypatch.setenv(PREFIX + name, value)
    settings = load_settings(None)
    assert settings.redis_url == "unix:///run/redis/redis.sock"
    assert [str(a) for a in settings.policy_listen] == [
        "127.0.0.1:10031",
        "[::1]:10031",
        "unix:/run/swl/policy.sock",
    ]
    assert settings.message_limits == (Limit(20, 60), Limit(100, 3600))
    assert settings.recipient_limits == ()  # empty: no recipient limit
    assert (settings.ipv4_prefix, settings.ipv6_prefix) == (24, 56)
    assert [str(n) for n in settings.exempt_networks] == ["10.0.0.0/8", "2001:db8::/32"]
    assert settings.on_store_error == "451 4.3.0 try later"
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == SECRET


def test_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "smtp-whitelist.env"
    env_file.write_text(
        "# site settings\nSMTP_WHITELIST_MESSAGE_LIMITS=7/1m\nSMTP_WHITELIST_IPV6_PREFIX=48\n"
    )
    monkeypatch.setenv(PREFIX + "IPV6_PREFIX", "60")  # the environment beats the file
    settings = load_settings(env_file)
    assert settings.message_limits == (Limit(7, 60),)
    assert settings.ipv6_prefix == 60


def test_missing_env_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(tmp_path / "nope.env")
    assert raised.value.lines == [f"--env-file {tmp_path / 'nope.env'}: no such file"]


BAD = [
    ("REDIS_URL", "http://127.0.0.1:6379"),
    ("REDIS_URL", "redis+sentinel://127.0.0.1:26379"),
    ("REDIS_URL", "redis+sentinel://127.0.0.1:26379/mymaster/zero"),
    ("REDIS_URL", "redis+sentinel://127.0.0.1/mymaster"),
    ("REDIS_URL", "redis+cluster://127.0.0.1:7000/0"),
    ("REDIS_URL", "redis+cluster://127.0.0.1:7000,:7001"),
    ("GRANT_MIN_REPLICAS", "-1"),
    ("GRANT_MIN_REPLICAS", "all"),
    ("KEY_PREFIX", "has space"),
    ("KEY_PREFIX", ""),
    ("POLICY_LISTEN", "localhost"),
    ("POLICY_LISTEN", "127.0.0.1:0"),
    ("POLICY_LISTEN", "127.0.0.1:70000"),
    ("POLICY_LISTEN", "[not-v6]:10031"),
    ("POLICY_LISTEN", "unix:relative.sock"),
    ("POLICY_LISTEN", ""),
    ("WEBHOOK_LISTEN", "::1:10032"),
    ("WEBHOOK_SECRET", "too-short"),
    ("WHITELIST_TTL", "0"),
    ("WHITELIST_TTL", "an hour"),
    ("MESSAGE_LIMITS", "100/1y"),
    ("MESSAGE_LIMITS", "100"),
    ("MESSAGE_LIMITS", "0/1h"),
    ("RECIPIENT_LIMITS", "10/1m,10/1m"),
    ("IPV4_PREFIX", "33"),
    ("IPV6_PREFIX", "8"),
    ("IPV6_PREFIX", "/64"),
    ("EXEMPT_NETWORKS", "10.0.0.1/8"),
    ("EXEMPT_NETWORKS", "campus"),
    ("ALLOWED_NETWORKS", "140.114.0.0/33"),
    ("LIMIT_REPLY", "450 4.7.1 {ip} {user}"),
    ("LIMIT_REPLY", "450 4.7.1 {0}"),
    ("LIMIT_REPLY", "450 4.7.1 {ip"),
    ("LIMIT_REPLY", "450 4.7.1\naction=OK"),
    ("LIMIT_REPLY", "   "),
    ("STORE_TIMEOUT", "0"),
    ("STORE_TIMEOUT", "fast"),
    ("MAX_CONNECTIONS", "0"),
    ("IDLE_TIMEOUT", "-1"),
    ("REQUEST_TIMEOUT", "0"),
    ("ON_STORE_ERROR", ""),
    ("ON_STORE_ERROR", "DUNNO\nOK"),
    ("REQUIRED_PTR_SUFFIX", "bad_domain!"),
    ("DNS_SERVERS", "dns.example.org"),
    ("ELIGIBLE", "staff"),
    ("MAX_GRANTS_PER_USER", "0"),
    ("LOG_LEVEL", "LOUD"),
    ("LOG_FORMAT", "xml"),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_value_is_one_line_naming_the_setting(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PREFIX + name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings(None)
    [line] = raised.value.lines
    assert line.startswith(f"{PREFIX}{name}: "), line
    assert len(line) > len(f"{PREFIX}{name}: ") + 5, "the line says what is wrong"
    assert "\n" not in line
    assert "Traceback" not in line


def test_bad_value_in_env_file_is_named(tmp_path: Path) -> None:
    env_file = tmp_path / "smtp-whitelist.env"
    env_file.write_text("SMTP_WHITELIST_MESSAGE_LIMITS=20/1m,100/1w\n")
    with pytest.raises(SettingsError) as raised:
        load_settings(env_file)
    [line] = raised.value.lines
    assert line.startswith("SMTP_WHITELIST_MESSAGE_LIMITS: ")
    assert "100/1w" in line


def test_several_bad_values_give_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREFIX + "MESSAGE_LIMITS", "x")
    monkeypatch.setenv(PREFIX + "IPV4_PREFIX", "99")
    with pytest.raises(SettingsError) as raised:
        load_settings(None)
    assert sorted(line.split(":")[0] for line in raised.value.lines) == [
        PREFIX + "IPV4_PREFIX",
        PREFIX + "MESSAGE_LIMITS",
    ]


def test_misspelt_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ignored in silence, the default limit would apply while the operator thinks theirs does.
    monkeypatch.setenv(PREFIX + "MESSAGE_LIMIT", "5/1m")
    with pytest.raises(SettingsError) as raised:
        load_settings(None)
    assert raised.value.lines == [f"{PREFIX}MESSAGE_LIMIT: unknown setting"]


def test_masked_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREFIX + "WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv(PREFIX + "REDIS_URL", "redis://swl:hunter2hunter2@redis.example:6379/0")
    shown = load_settings(None).masked()
    assert shown[PREFIX + "WEBHOOK_SECRET"] == "********"
    assert shown[PREFIX + "REDIS_URL"] == "redis://********@redis.example:6379/0"
    assert SECRET not in repr(shown)
    assert "hunter2" not in repr(shown)
    assert shown[PREFIX + "MESSAGE_LIMITS"] == "100/1h"


def test_sentinel_and_cluster_urls() -> None:
    sentinel = parse_redis_url("redis+sentinel://:pw%40x@10.0.0.1:26379,[::1]:26380/relay/2")
    assert sentinel == HaUrl(
        "sentinel", (("10.0.0.1", 26379), ("::1", 26380)), None, "pw@x", "relay", 2
    )
    cluster = parse_redis_url("redis+cluster://app:secret@r1:7000,r2:7001")
    assert cluster == HaUrl("cluster", (("r1", 7000), ("r2", 7001)), "app", "secret")
    assert parse_redis_url("redis://127.0.0.1:6379/0") is None


def test_masked_hides_sentinel_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREFIX + "REDIS_URL", "redis+sentinel://:hunter2hunter2@s1:26379/relay")
    shown = load_settings(None).masked()
    assert shown[PREFIX + "REDIS_URL"] == "redis+sentinel://********@s1:26379/relay"


def test_parse_listen() -> None:
    assert parse_listen("[2001:db8::1]:25,unix:/run/p.sock") == (
        ListenAddress("2001:db8::1", 25, None),
        ListenAddress(None, None, "/run/p.sock"),
    )


def test_deployment_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings(None)
    assert (defaults.limited_networks, defaults.mode, defaults.syslog_facility) == (
        (),
        "enforce",
        "",
    )
    assert defaults.too_big_reply.startswith("550 5.7.1 ")
    monkeypatch.setenv(PREFIX + "LIMITED_NETWORKS", "140.114.0.0/16, 2001:db8::/48")
    monkeypatch.setenv(PREFIX + "MODE", " Monitor ")
    monkeypatch.setenv(PREFIX + "SYSLOG_FACILITY", "MAIL")
    monkeypatch.setenv(PREFIX + "TOO_BIG_REPLY", "554 5.7.1 {ip}: over {limit} per {window}")
    settings = load_settings(None)
    assert [str(n) for n in settings.limited_networks] == ["140.114.0.0/16", "2001:db8::/48"]
    assert (settings.mode, settings.syslog_facility) == ("monitor", "mail")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOO_BIG_REPLY", "450 4.7.1 too many recipients"),  # temporary: would be retried
        ("TOO_BIG_REPLY", "REJECT too many"),
        ("TOO_BIG_REPLY", "550 5.7.1 {user}"),
        ("TOO_BIG_REPLY", "550"),
        ("MODE", "observe"),
        ("SYSLOG_FACILITY", "kern"),
        ("LIMITED_NETWORKS", "campus"),
    ],
)
def test_bad_deployment_settings_name_themselves(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(PREFIX + name, value)
    with pytest.raises(SettingsError) as error:
        load_settings(None)
    assert [line.split(":")[0] for line in error.value.lines] == [PREFIX + name]
