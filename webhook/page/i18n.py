"""Languages of the page: English and Traditional Chinese, from gettext message catalogs.

The templates are written in English; ``locale/zh_TW/LC_MESSAGES/messages.po`` translates
them (``make catalogs`` extracts and compiles; the compiled ``.mo`` is committed so an install
needs no build step). Each language has its own Jinja2 environment, with autoescaping and the
i18n extension bound to that language's catalog, so rendering never switches a shared state.
"""

from __future__ import annotations

import gettext
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

LOCALE_DIR = Path(__file__).parent / "locale"
TEMPLATES = Path(__file__).parent / "templates"
DOMAIN = "messages"

EN, ZH_TW = "en", "zh_TW"
HTML_LANG = {EN: "en", ZH_TW: "zh-Hant-TW"}
# ?lang= values (docs/interface.md), and what each means.
QUERY_LANGS = {"en": EN, "zh-TW": ZH_TW}
ENV_KEYS = {lang: web.AppKey(f"page_jinja2_{lang}", jinja2.Environment) for lang in HTML_LANG}
# Accept-Language: a browser sends a handful of ranges; reading more is pointless work.
MAX_RANGES = 16


def translations(lang: str) -> gettext.NullTranslations:
    """The catalog for ``lang`` (English is the templates' own text)."""
    if lang == EN:
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[lang])


def setup(app: web.Application) -> None:
    """One autoescaping environment per language on ``app``."""
    for lang, key in ENV_KEYS.items():
        env = aiohttp_jinja2.setup(
            app,
            app_key=key,
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            extensions=["jinja2.ext.i18n"],
            undefined=jinja2.StrictUndefined,
            default_helpers=False,
        )
        # newstyle: translated strings are escaped like any other value, and %(name)s
        # placeholders are filled by the gettext call itself.
        env.install_gettext_translations(translations(lang), newstyle=True)  # type: ignore[attr-defined]


def from_accept_language(header: str) -> str:
    """The best of our languages for an ``Accept-Language`` value (RFC 9110 §12.5.4)."""
    best, best_q = EN, 0.0
    for position, item in enumerate(header.split(",")[:MAX_RANGES]):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip() == "q":
            try:
                q = float(value)
            except ValueError:
                continue
        tag = tag.strip().lower()
        lang = (
            ZH_TW if tag == "zh" or tag.startswith("zh-") else EN if tag.startswith("en") else None
        )
        # The first range with the highest weight wins (a later equal weight does not).
        if lang is not None and q > best_q and not (q == best_q and position):
            best, best_q = lang, q
    return best


def query_suffix(request: web.Request) -> str:
    """``?lang=...`` when the request chose its language so, else ``""``."""
    asked = request.query.get("lang", "")
    return f"?lang={asked}" if asked in QUERY_LANGS else ""


def choose(request: web.Request) -> str:
    """``?lang=en`` / ``?lang=zh-TW`` first, else the browser's ``Accept-Language``."""
    asked = QUERY_LANGS.get(request.query.get("lang", ""))
    if asked is not None:
        return asked
    return from_accept_language(request.headers.get("Accept-Language", ""))
