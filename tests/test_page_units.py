"""The page's pure parts tested directly: signing, the client address, language choice, the
message catalogs, the new settings, and the ``handoff-url`` command."""

from __future__ import annotations

import gettext
import io
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from policyd.decision import Replies
from ratelimit.addresses import parse_networks
from smtp_whitelist.settings import Settings
from tests.support import clean_env, require_tool, run_cli
from webhook.page import i18n
from webhook.page.client_address import client_address
from webhook.page.handoff import HandoffInvalid, handoff_url, sign, verify

SECRET = "k" * 40
NOW = 1_800_000_000


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def test_sign_is_hmac_sha256_over_the_documented_text() -> None:
    import hashlib
    import hmac

    text = b"alice\nstaff\nnormal\n192.0.2.1\n1800000000"
    expected = hmac.new(SECRET.encode(), text, hashlib.sha256).hexdigest()
    assert sign(SECRET, "alice", "staff", "normal", "192.0.2.1", NOW) == expected


def test_url_round_trip_with_values_that_need_encoding() -> None:
    url = handoff_url(
        "https://x.example/apply/", SECRET, user="a b&c=ü", role="staff", status="normal",
        ip="2001:db8::1", ts=NOW,
    )  # fmt: skip
    assert url.startswith("https://x.example/apply/handoff?")
    got = verify(SECRET, query(url), now=NOW + 1, max_age=120)
    assert (got.user, got.ip, got.ts) == ("a b&c=ü", "2001:db8::1", NOW)


@pytest.mark.parametrize(
    ("change", "now"),
    [
        ({"user": "bob"}, NOW),
        ({"ip": "192.0.2.2"}, NOW),
        ({"sig": "0" * 64}, NOW),
        ({"sig": "ü"}, NOW),
        ({}, NOW + 121),  # expired
        ({}, NOW - 6),  # from the future beyond the clock skew
    ],
)
def test_verify_refuses(change: dict[str, str], now: int) -> None:
    values = query(handoff_url("http://x/apply", SECRET, user="alice", role="staff",
                               status="normal", ip="192.0.2.1", ts=NOW))  # fmt: skip
    values.update(change)
    with pytest.raises(HandoffInvalid):
        verify(SECRET, values, now=now, max_age=120)


def test_verify_refuses_control_characters_even_when_signed() -> None:
    url = handoff_url("http://x/apply", SECRET, user="a\nb", role="staff", status="normal",
                      ip="192.0.2.1", ts=NOW)  # fmt: skip
    with pytest.raises(HandoffInvalid, match="control"):
        verify(SECRET, query(url), now=NOW, max_age=120)


TRUSTED = parse_networks("10.0.0.0/8")


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        ("192.0.2.1", [], "192.0.2.1"),
        ("192.0.2.1", ["198.51.100.1"], "192.0.2.1"),  # untrusted peer: header ignored
        ("10.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # rightmost untrusted
        ("10.0.0.1", ["198.51.100.1, 10.0.0.2"], "198.51.100.1"),  # skip trusted hops
        ("10.0.0.1", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # two header lines
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),  # all trusted: the leftmost
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", ["nonsense"], None),
        ("10.0.0.1", ["::ffff:198.51.100.1"], "198.51.100.1"),
        (None, ["198.51.100.1"], "198.51.100.1"),  # UNIX socket: the local proxy
        (None, [], None),
    ],
)
def test_client_address(peer: str | None, headers: list[str], expected: str | None) -> None:
    found = client_address(peer, headers, TRUSTED)
    assert (str(found) if found else None) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", "en"),
        ("zh-TW,zh;q=0.9,en;q=0.8", "zh_TW"),
        ("en-US,en;q=0.9,zh-TW;q=0.8", "en"),
        ("fr-FR,fr;q=0.9,zh-Hant;q=0.5", "zh_TW"),
        ("de, en;q=0.1, zh;q=0.2", "zh_TW"),
        ("zh;q=bad, en", "en"),
        ("ja", "en"),
    ],
)
def test_language_from_accept_language(header: str, expected: str) -> None:
    assert i18n.from_accept_language(header) == expected


def test_committed_mo_matches_its_po() -> None:
    """The shipped .mo is the compiled .po: run `make catalogs` after editing a translation."""
    po_path = i18n.LOCALE_DIR / "zh_TW" / "LC_MESSAGES" / "messages.po"
    with po_path.open("rb") as source:
        catalog = read_po(source)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    compiled = gettext.GNUTranslations(buffer)
    shipped = i18n.translations("zh_TW")
    assert all(m.string for m in catalog if m.id), "untranslated text in zh_TW"
    for message in catalog:
        if message.id and isinstance(message.id, str):
            assert shipped.gettext(message.id) == compiled.gettext(message.id), message.id


def test_every_template_text_is_in_the_catalog() -> None:
    from babel.messages.extract import extract_from_dir

    po_path = i18n.LOCALE_DIR / "zh_TW" / "LC_MESSAGES" / "messages.po"
    with po_path.open("rb") as source:
        known = {m.id for m in read_po(source) if m.id}
    method_map = [("**.html", "jinja2.ext:babel_extract")]
    options = {"**.html": {"extensions": "jinja2.ext.i18n"}}
    found = {m[2] for m in extract_from_dir(str(i18n.TEMPLATES), method_map, options)}
    assert found - known == set(), "run `make catalogs` and translate the new texts"


# -- settings -------------------------------------------------------------------------------


def test_page_settings_defaults_and_off_when_empty() -> None:
    settings = Settings(handoff_secret="")
    assert settings.handoff_secret is None
    assert (settings.handoff_max_age, settings.session_idle, settings.session_max_age) == (
        120, 600, 1800,
    )  # fmt: skip
    assert settings.trusted_proxies == ()


def _run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=clean_env(**env), cwd=Path(__file__).parent)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("HANDOFF_SECRET", "short", "at least 32 characters"),
        ("HANDOFF_MAX_AGE", "0", "greater than or equal to 10"),
        ("TRUSTED_PROXIES", "10.0.0.1/8", "not a network"),
        ("PAGE_URL", "ftp://x", "http:// or https://"),
        ("LIMIT_REPLY", "450 4.7.1 go to {portal}", "{page}"),
    ],
)
def test_bad_page_setting_is_one_line_exit_2(name: str, value: str, says: str) -> None:
    result = _run_cli("check", **{name: value})
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"smtp-whitelist: SMTP_WHITELIST_{name}: "), result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_limit_reply_names_the_page() -> None:
    settings = Settings(
        limit_reply="450 4.7.1 {ip} is over {limit}; register at {page}",
        page_url="https://mail.example.edu.tw/apply/",
    )
    reply = Replies.from_settings(settings).limit_reply
    filled = reply.format(ip="192.0.2.1", limit="3 messages", window="1h")
    assert (
        filled
        == "450 4.7.1 192.0.2.1 is over 3 messages; register at https://mail.example.edu.tw/apply"
    )


def test_handoff_url_command_signs_what_the_page_verifies() -> None:
    before = int(time.time())
    result = _run_cli(
        "handoff-url", "--user", "alice", "--role", "staff", "--status", "normal",
        "--ip", "192.0.2.1", HANDOFF_SECRET=SECRET, PAGE_URL="https://x.example/apply",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith("https://x.example/apply/handoff?")
    got = verify(SECRET, query(url), now=time.time(), max_age=120)
    assert got.user == "alice"
    assert got.ts >= before


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "HANDOFF_SECRET"),
        ({"HANDOFF_SECRET": SECRET}, "--base"),
    ],
)
def test_handoff_url_command_needs_secret_and_base(env: dict[str, str], says: str) -> None:
    result = _run_cli(
        "handoff-url", "--user", "a", "--role", "r", "--status", "s", "--ip", "192.0.2.1", **env
    )
    assert result.returncode == 2
    assert says in result.stderr


def test_readme_shell_signer_matches() -> None:
    """The README's shell recipe (printf | openssl dgst) signs exactly what the page checks."""
    openssl = require_tool("openssl")
    values = ["alice", "staff", "normal", "192.0.2.1", str(NOW)]
    text = subprocess.run(
        ["printf", "%s\\n%s\\n%s\\n%s\\n%s", *values], capture_output=True, check=True
    ).stdout
    digest = subprocess.run(
        [openssl, "dgst", "-sha256", "-hmac", SECRET, "-r"],
        input=text, capture_output=True, check=True,
    ).stdout.decode().split()[0]  # fmt: skip
    assert digest == sign(SECRET, *values)
