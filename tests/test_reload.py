"""SIGHUP in ``serve``: the webhook's settings apply at once; a setting that needs a restart is
named in the log, by its environment name, and keeps its running value."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from tests.support import RedisServer, wait_for
from tests.test_e2e_postfix import Product

STUDENT = {"ip": "198.18.5.5", "user": "s1234567", "role": "student", "status": "normal"}


def test_sighup_applies_webhook_settings_and_names_what_needs_a_restart(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    product = Product(tmp_path, redis_server.url, {})
    product.env_file.write_text("SMTP_WHITELIST_ELIGIBLE=staff:normal\n", encoding="utf-8")
    product.start()
    try:
        assert product.webhook("POST", "/v1/whitelist", STUDENT) == 403
        product.env_file.write_text(
            "SMTP_WHITELIST_ELIGIBLE=staff:normal,student:normal\n"
            "SMTP_WHITELIST_WHITELIST_TTL=600\n"
            "SMTP_WHITELIST_KEY_PREFIX=other:\n"
            "SMTP_WHITELIST_STORE_TIMEOUT=0.7\n",
            encoding="utf-8",
        )
        assert product.process is not None
        product.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: settings reloaded" in product.log(), what="the reload")
        assert product.webhook("POST", "/v1/whitelist", STUDENT) == 201
        # The grant lasts the new WHITELIST_TTL, under the running (old) KEY_PREFIX.
        product.settings["KEY_PREFIX"] = "swl:"  # the environment wins over the edited file
        shown = product.cli("list")
        assert re.search(r"\s(599|600) s\s", shown.stdout), shown.stdout
    finally:
        product.stop()
    log = product.log()
    reloaded = next(line for line in log.splitlines() if "SIGHUP: settings reloaded" in line)
    assert "SMTP_WHITELIST_ELIGIBLE" in reloaded
    assert "SMTP_WHITELIST_WHITELIST_TTL" in reloaded
    for name, running in (("KEY_PREFIX", "swl:"), ("STORE_TIMEOUT", "0.5")):
        assert (
            f"SIGHUP: SMTP_WHITELIST_{name} changed; it takes effect on restart (still {running})"
        ) in log
