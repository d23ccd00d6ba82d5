"""The self-service page in a real headless Chromium (Debian's chromium + chromedriver, Selenium).

The whole flow, in English and in Traditional Chinese: ``smtp-whitelist handoff-url`` → the
page → the verification code (read from the test's own Redis, as a person reads the image) →
"Yes" → the result page; then a real Postfix accepts more mail from that address than the limit
allows. The page is reached over a non-loopback address of this machine (the host side of a
test network namespace in 198.18.0.0/15), so the address the page takes from the connection is
one that may be granted, and Postfix sees mail from the very same address.

Every page the browser sees is photographed; `make screenshots` refreshes docs/screenshots/
(committed; the README shows them).
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import http.server
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.page_helpers import page_in_thread, page_settings
from tests.postfix_instance import NamespaceHosts, PostfixInstance
from tests.support import RedisServer, free_port, require_tool
from tests.test_e2e_postfix import Product, send
from webhook.page.views import COOKIE

pytestmark = pytest.mark.e2e

# CI cancelling the run sends SIGTERM: turn it into KeyboardInterrupt so the fixtures' teardown
# still quits chromedriver and Chromium instead of orphaning them.
signal.signal(signal.SIGTERM, signal.default_int_handler)

# Every page is photographed on every run; `make screenshots` points this at docs/screenshots/
# (committed, shown in the README), so that an ordinary `make test` leaves the tree clean.
SCREENSHOTS = Path(
    os.environ.get("SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "smtp-whitelist-screenshots"
)
HANDOFF_SECRET = "browser-handoff-" + "h" * 40
LIMIT = 3
LANGS = {"en": "en-US,en", "zh-TW": "zh-TW,zh"}
# A page answer, even the hand-off's redirect, comes in well under this on a loaded CI machine.
WAIT = 20


def _no_dns(*hosts: str) -> str:
    """Chromium would otherwise look names up at start; nothing may leave this machine."""
    excluded = "".join(f" , EXCLUDE {host}" for host in ("localhost", *hosts))
    return f"--host-resolver-rules=MAP * ~NOTFOUND{excluded}"


@pytest.fixture
def chrome() -> Iterator[Callable[..., WebDriver]]:
    """Start a headless Chromium whose Accept-Language is ``lang``'s; all quit afterwards."""
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    started: list[WebDriver] = []

    def start(lang: str, *hosts: str) -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for argument in (
            "--headless=new",
            "--no-sandbox",  # the tests run as root
            "--disable-dev-shm-usage",
            "--window-size=1000,1100",  # the whole page fits: the screenshots are not cut off
            "--hide-scrollbars",
            _no_dns("127.0.0.1", "127.0.0.2", *hosts),
        ):
            options.add_argument(argument)
        options.add_experimental_option("prefs", {"intl.accept_languages": LANGS[lang]})
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        started.append(driver)
        return driver

    try:
        yield start
    finally:
        for driver in started:
            driver.quit()


def main_error(driver: WebDriver) -> str | None:
    return driver.find_element(By.TAG_NAME, "main").get_attribute("data-error")


def wait_for_page(driver: WebDriver, error: str, heading: str | None = None) -> None:
    """Wait until the page shown is the one with ``data-error`` = ``error``.

    The page is read in one script call, not through element handles: a navigation in flight
    replaces the document between finding <main> and reading it, and Chromium then reports
    the old node as stale or as "Node with given id does not belong to the document" (a plain
    WebDriverException). Either way the next poll reads the new page; a wait that never sees
    the page fails with the last such error in its message.
    """
    last_error: list[str] = []

    def shown(d: WebDriver) -> bool:
        try:
            seen = d.execute_script(
                "const m = document.querySelector('main');"
                "const h = document.querySelector('h1');"
                "return [m ? m.getAttribute('data-error') : null, h ? h.innerText : ''];"
            )
        except WebDriverException as exc:  # navigation in flight; see above
            last_error[:] = [exc.msg or type(exc).__name__]
            return False
        main_error_value, heading_text = seen
        return main_error_value == error and (heading is None or heading in heading_text)

    try:
        WebDriverWait(driver, WAIT, poll_frequency=0.05).until(shown)
    except TimeoutException:
        seen = driver.execute_script(
            "const m = document.querySelector('main'); return m && m.getAttribute('data-error');"
        )
        raise AssertionError(
            f"page with data-error={error!r} (heading {heading!r}) never shown; "
            f"last seen data-error={seen!r}, last error: {last_error or None}"
        ) from None


def screenshot(driver: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def code_from_redis(redis_url: str, prefix: str, driver: WebDriver) -> str:
    """The code the image shows, read from the test's own Redis via the session cookie."""
    cookie = driver.get_cookie(COOKIE)
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert driver.execute_script("return document.cookie") == ""  # invisible to scripts
    digest = hashlib.sha256(cookie["value"].encode()).hexdigest()
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.get(f"{prefix}page:c:{{{digest}}}")
    finally:
        client.close()
    assert isinstance(raw, bytes)
    return raw.decode()


def image_loaded(driver: WebDriver, element_id: str) -> bool:
    width = driver.execute_script(f"return document.getElementById('{element_id}').naturalWidth")
    return bool(width)


@pytest.mark.parametrize("lang", ["en", "zh-TW"])
def test_whole_flow_in_a_browser_then_postfix_sends_past_the_limit(
    lang: str,
    chrome: Callable[..., WebDriver],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    require_tool("postfix")
    require_tool("ip")
    suffix = "zh" if lang == "zh-TW" else "en"
    with NamespaceHosts(clients=1) as hosts:
        address = hosts.host_address  # this machine's own non-loopback test address
        product = Product(tmp_path / "product", redis_server.url, {})
        page_base = f"http://{address}:{product.webhook_port}"
        product.settings.update(
            WEBHOOK_LISTEN=f"127.0.0.1:{product.webhook_port},{address}:{product.webhook_port}",
            HANDOFF_SECRET=HANDOFF_SECRET,
            PAGE_URL=f"{page_base}/apply",
            LIMIT_REPLY="450 4.7.1 {ip} sent {limit} per {window}; to send more, apply at {page}",
        )
        postfix = PostfixInstance(
            f"inet:127.0.0.1:{product.policy_port}",
            port=free_port(),
            hosts=["127.0.0.1", address],
            mynetworks=["127.0.0.0/8", str(hosts.subnet)],
        )
        try:
            product.start()
            postfix.start()
            # At the limit, and the refusal tells where to go.
            for _ in range(LIMIT):
                assert send(address, postfix.port, address).accepted
            refused = send(address, postfix.port, address)
            assert refused.code == 450, refused
            assert f"apply at {page_base}/apply" in refused.text

            # The login system's link, made by the reference signer.
            signer = product.cli(
                "handoff-url", "--user", "alice", "--role", "staff", "--status", "normal",
                "--ip", address,
            )  # fmt: skip
            assert signer.returncode == 0, signer.stderr
            url = signer.stdout.strip()
            assert url.startswith(f"{page_base}/apply/handoff?")

            # The login system is another site linking here: the cross-site top-level GET must
            # still set and send the SameSite=Lax session cookie.
            driver = chrome(lang, address)
            login = f'<a id="portal" href="{html.escape(url)}">Division of Network Systems</a>'
            with other_site(login) as login_system:
                driver.get(login_system)
                driver.find_element(By.ID, "portal").click()
            WebDriverWait(driver, WAIT, poll_frequency=0.05).until(
                lambda d: d.current_url == f"{page_base}/apply"
            )
            wait_for_page(driver, "none")
            assert driver.find_element(By.ID, "user").text == "alice"
            assert driver.find_element(By.ID, "ip").text == address
            assert image_loaded(driver, "captcha")
            assert driver.find_element(By.ID, "captcha").get_attribute("alt")
            label = driver.find_element(By.CSS_SELECTOR, "label[for=code]")
            assert label.text
            if lang == "zh-TW":
                assert driver.find_element(By.ID, "yes").text == "確定"
            screenshot(driver, f"apply-{suffix}")

            # Keyboard only: the code field has focus; type, then Enter submits the form.
            code = code_from_redis(redis_server.url, "swl:", driver)
            field = driver.switch_to.active_element
            assert field.get_attribute("id") == "code"
            field.send_keys(code + "\n")
            wait_for_page(driver, "none", "登記完成" if lang == "zh-TW" else "Registered")
            result = driver.find_element(By.CSS_SELECTOR, ".result").text
            assert address in result
            screenshot(driver, f"done-{suffix}")
            # Print-friendly: on paper the result stays, the navigation goes.
            driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
            assert not driver.find_element(By.TAG_NAME, "nav").is_displayed()
            assert driver.find_element(By.CSS_SELECTOR, ".result").is_displayed()
            assert driver.find_element(By.ID, "until").is_displayed()
            driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})

            # Effective at once: well past the limit, every message is accepted.
            for _ in range(LIMIT + 2):
                sent = send(address, postfix.port, address)
                assert sent.accepted, sent
            audit = product.cli("audit", "--ip", address, "--json")
            assert '"source": "page"' in audit.stdout, audit.stdout
        finally:
            try:
                postfix.close()
            finally:
                product.stop()


@contextlib.contextmanager
def other_site(body: str, host: str = "127.0.0.2") -> Iterator[str]:
    """Another site (another address is another site to a browser) serving one HTML page."""
    data = body.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        # Chromium opens spare connections it may never use; they must not hold the server.
        timeout = 5

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("lang", ["en", "zh-TW"])
def test_failure_pages_in_a_browser(
    lang: str, chrome: Callable[..., WebDriver], redis_server: RedisServer
) -> None:
    """Hand-off expired, IP mismatch, -4, a wrong code, a cross-site POST: each as its page."""
    suffix = "zh" if lang == "zh-TW" else "en"
    settings = page_settings(redis_server.url)
    with page_in_thread(settings) as page:
        driver = chrome(lang)

        tampered = page.handoff(ip="127.0.0.1").replace("user=alice", "user=mallory")
        driver.get(tampered)
        wait_for_page(driver, "handoff_expired")
        screenshot(driver, f"error-handoff-expired-{suffix}")

        driver.get(page.handoff(ip="127.0.0.9"))
        wait_for_page(driver, "ip_mismatch")
        screenshot(driver, f"error-ip-mismatch-{suffix}")

        driver.get(page.base + "/apply")
        wait_for_page(driver, "-4")
        screenshot(driver, f"error-portal-check-{suffix}")

        driver.get(page.handoff(ip="127.0.0.1", role="student", status="graduated"))
        wait_for_page(driver, "-5")
        screenshot(driver, f"error-not-eligible-{suffix}")

        url = page.handoff(ip="127.0.0.1")
        driver.get(url)
        wait_for_page(driver, "none")
        right = code_from_redis(redis_server.url, settings.key_prefix, driver)
        wrong = f"{(int(right) + 1) % 100000:05d}"
        driver.find_element(By.ID, "code").send_keys(wrong)
        driver.find_element(By.ID, "yes").click()
        wait_for_page(driver, "wrong_code")
        assert driver.find_element(By.CSS_SELECTOR, ".problem").text
        assert image_loaded(driver, "captcha")
        screenshot(driver, f"wrong-code-{suffix}")

        # The right code from a loopback address: the webhook's rule refuses it, as a page.
        right = code_from_redis(redis_server.url, settings.key_prefix, driver)
        driver.find_element(By.ID, "code").send_keys(right + "\n")
        wait_for_page(driver, "invalid_ip")
        screenshot(driver, f"error-invalid-ip-{suffix}")

        # The same link a second time: used up.
        driver.get(url)
        wait_for_page(driver, "handoff_expired")

        # Another site's form posting to the page: the browser does not send the SameSite=Lax
        # cookie with a cross-site POST, and there is no CSRF token: nothing happens.
        form = (
            f'<form method="post" action="{page.base}/apply"><input name="code" value="12345">'
            '<button id="go">win a prize</button></form>'
        )
        with other_site(form) as evil:
            driver.get(evil)
            driver.find_element(By.ID, "go").click()
            wait_for_page(driver, "-4")
        # And the session itself is unharmed.
        driver.get(page.base + "/apply")
        wait_for_page(driver, "none")


def test_readme_shows_committed_screenshots_in_both_languages() -> None:
    """Every screenshot the README shows is committed (`make screenshots` takes them anew)."""
    repo = Path(__file__).resolve().parent.parent
    readme = (repo / "README.md").read_text(encoding="utf-8")
    shown = set(re.findall(r"\(docs/screenshots/([\w-]+\.png)\)", readme))
    assert {"apply-en.png", "apply-zh.png", "done-en.png", "done-zh.png"} <= shown
    for name in shown:
        assert (repo / "docs" / "screenshots" / name).stat().st_size > 0, name
