"""The visor's web page: the login flow, the cookie, CSRF and origin checks over plain HTTP, then
the page itself in a real headless browser (Debian's chromium + chromedriver, driven by Selenium):
log in through the URL `skywire cli visor ui` prints, watch a forward's counters move, stop it,
expose a port, and see the CLI's own error message for a bad port."""
from contextlib import closing
import os
import re
import shutil
import threading
import time

import httpx
import pytest

from harness import TCPServer, echo_handler, free_port, roundtrip

URL_RE = re.compile(r"^http://127\.0\.0\.1:(\d+)/ui/login\?code=([0-9a-f]{64})$")


@pytest.fixture(scope="module")
def ab(net):
    """a exposes an echo service; b (whose page is tested) forwards to it."""
    a = net.start_visor("ui-a")
    b = net.start_visor("ui-b")
    backend = TCPServer(echo_handler)
    a.ok("skynet", "srv", "start", "--ports", str(backend.port), "--name", "ui-echo")
    try:
        yield a, b, backend
    finally:
        backend.close()


def login_url(v) -> str:
    r = v.cli("visor", "ui")
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip()
    m = URL_RE.match(url)
    assert m, url
    assert f"127.0.0.1:{m.group(1)}" == v.rpc
    return url


def login(v) -> httpx.Client:
    """An httpx client holding a fresh session cookie for v's page."""
    client = httpx.Client(base_url=f"http://{v.rpc}", follow_redirects=False, timeout=15)
    r = client.get(login_url(v).split(v.rpc, 1)[1])
    assert r.status_code == 303 and r.headers["location"] == "/ui/", (r.status_code, r.text)
    return client


def csrf_of(client: httpx.Client) -> str:
    page = client.get("/ui/")
    assert page.status_code == 200, page.text
    m = re.search(r'<meta name="skywire-csrf" content="([0-9a-f]{64})">', page.text)
    assert m, page.text
    return m.group(1)


def control_token(net, v) -> str:
    host, port = v.rpc.split(":")
    return open(os.path.join(net.env["SKYWIRE_RUNTIME_DIR"], f"rpc-{host}-{port}.token")).read().strip()


# -- HTTP level ----------------------------------------------------------------------------------
def test_login_code_works_once_and_sets_a_strict_httponly_cookie(net, ab):
    _, b, _ = ab
    url = login_url(b)
    path = url.split(b.rpc, 1)[1]
    with httpx.Client(base_url=f"http://{b.rpc}", follow_redirects=False, timeout=15) as client:
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/ui/"
        cookie = r.headers["set-cookie"]
        name, value = cookie.split(";", 1)[0].split("=", 1)
        assert name == f"skywire_ui_{b.rpc.split(':')[1]}" and re.fullmatch(r"[0-9a-f]{64}", value), cookie
        attrs = [a.strip().lower() for a in cookie.split(";")[1:]]
        assert "httponly" in attrs and "samesite=strict" in attrs and "path=/" in attrs, cookie
        assert any(a.startswith("max-age=") and int(a.split("=")[1]) > 0 for a in attrs), cookie

        # The cookie opens the page and its data; nothing carries the control token.
        state = client.get("/ui/api/state")
        assert state.status_code == 200 and state.json()["visor"]["public_key"] == b.pk
        token = control_token(net, b)
        for p in ("/ui/", "/ui/api/state", "/ui/assets/app.js"):
            assert token not in client.get(p).text, p

        # The same code a second time: refused, no cookie.
        with httpx.Client(base_url=f"http://{b.rpc}", follow_redirects=False, timeout=15) as other:
            again = other.get(path)
            assert again.status_code == 401 and "set-cookie" not in again.headers
            assert "skywire cli visor ui" in again.text
            assert other.get("/ui/api/state").status_code == 401


def test_without_a_valid_cookie_everything_is_401(ab):
    _, b, _ = ab
    base = f"http://{b.rpc}"
    port = b.rpc.split(":")[1]
    for cookies in ({}, {f"skywire_ui_{port}": "0" * 64}, {f"skywire_ui_{port}": ""}):
        with httpx.Client(base_url=base, cookies=cookies, follow_redirects=False, timeout=15) as c:
            page = c.get("/ui/")
            assert page.status_code == 401 and f"skywire cli visor ui --rpc {b.rpc}" in page.text, page.text
            assert c.get("/ui/api/state").status_code == 401
            assert c.get("/ui/api/events").status_code == 401
            r = c.post("/ui/api/servers", json={"ports": "4321"},
                       headers={"X-Skywire-CSRF": "0" * 64, "Origin": base})
            assert r.status_code == 401 and "not logged in" in r.json()["error"]
    assert not any(i["name"] == "skynet-4321" for i in b.json("skynet", "srv", "status"))
    # The bearer API is unchanged: a login code needs the token like every other route.
    assert httpx.post(f"{base}/v1/ui/login-code", timeout=15).status_code == 401
    bad = httpx.get(f"{base}/v1/visor", headers={"Authorization": "Bearer " + "0" * 64}, timeout=15)
    assert bad.status_code == 401


def test_cross_origin_and_token_less_changes_are_refused(ab):
    _, b, _ = ab
    port = free_port()
    base = f"http://{b.rpc}"
    with closing(login(b)) as client:
        csrf = csrf_of(client)
        good = {"Origin": base, "Sec-Fetch-Site": "same-origin", "X-Skywire-CSRF": csrf}
        body = {"ports": str(port), "name": "sneaky"}
        refusals = [
            ({**good, "Origin": "http://evil.example"}, "Origin"),
            ({**good, "Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site"),
            ({**good, "Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site"),
            ({k: v for k, v in good.items() if k != "X-Skywire-CSRF"}, "CSRF"),
            ({**good, "X-Skywire-CSRF": "0" * 64}, "CSRF"),
        ]
        for headers, word in refusals:
            r = client.post("/ui/api/servers", json=body, headers=headers)
            assert r.status_code == 403 and word in r.json()["error"], (headers, r.text)
            assert "access-control-allow-origin" not in r.headers
        # A form post (what a foreign page can send without a preflight) is refused too.
        r = client.post("/ui/api/servers", content=f"ports={port}", headers={
            **good, "Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 403, r.text
        assert not any(i["name"] == "sneaky" for i in b.json("skynet", "srv", "status"))

        # The page's own request passes (the refusals above were about the checks, not the body).
        ok = client.post("/ui/api/servers", json=body, headers=good)
        assert ok.status_code == 200 and ok.json()["ports"] == [port], ok.text
        assert [i["ports"] for i in b.json("skynet", "srv", "status") if i["name"] == "sneaky"] == [[port]]
        stop = client.post("/ui/api/servers/stop", json={"name": "sneaky"}, headers=good)
        assert stop.status_code == 200 and stop.json()["stopped"] == ["sneaky"]

        # Logging out ends the session on the server, not only in the browser.
        assert client.post("/ui/api/logout", json={}, headers=good).status_code == 200
        assert client.get("/ui/api/state").status_code == 401


def test_the_page_keeps_to_its_own_origin(ab):
    _, b, _ = ab
    with closing(login(b)) as client:
        for path in ("/ui/", "/ui/api/state", "/ui/assets/app.js", "/ui/login?code=x"):
            r = client.get(path, headers={"Origin": "http://evil.example"})
            h = r.headers
            assert "access-control-allow-origin" not in h, path
            assert h["x-frame-options"] == "DENY", path
            csp = h["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp, csp
            assert h["x-content-type-options"] == "nosniff" and h["referrer-policy"] == "no-referrer"
        # No inline script in the page: the CSP above would block it anyway.
        assert re.search(r"<script(?![^>]*\bsrc=)", client.get("/ui/").text) is None
        # A page under another name (DNS rebinding to 127.0.0.1) is not served.
        r = client.get("/ui/api/state", headers={"Host": "evil.example"})
        assert r.status_code == 403 and "public_key" not in r.text


# -- in a browser ----------------------------------------------------------------------------------
def chrome_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    assert browser, "chromium is not installed (.ci/run installs it: apt-get install chromium)"
    assert os.path.exists(driver), "chromedriver is not installed (.ci/run installs it: apt-get install chromium-driver)"
    return browser, driver


@pytest.fixture(scope="module")
def browser(net):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chrome_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,1500", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={net.dir / 'chromium-profile'}"):
        options.add_argument(arg)
    # A given driver path: Selenium Manager is not run (there is nothing to download).
    service = Service(executable_path=driver_path, log_output=str(net.dir / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(what: str, probe, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as e:  # the element may be re-rendered between find and read
            last = e
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def fill(driver, form_id: str, values: dict[str, str]) -> None:
    from selenium.webdriver.common.by import By
    form = driver.find_element(By.ID, form_id)
    for name, value in values.items():
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)


def submit(driver, form_id: str) -> None:
    from selenium.webdriver.common.by import By
    driver.find_element(By.CSS_SELECTOR, f"#{form_id} button[type=submit]").click()


def click_stop(driver, table: str, name: str) -> None:
    """Clicks a row's stop button. The page re-renders its tables as their counters move, so a
    row found can be replaced before the click: found again, a bounded number of times."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    for attempt in range(20):
        try:
            driver.find_element(By.CSS_SELECTOR, f'#{table} tr[data-name="{name}"] button.stop').click()
            return
        except StaleElementReferenceException:
            if attempt == 19:
                raise
            time.sleep(0.05)


def row_value(driver, table: str, name: str, cls: str) -> int:
    from selenium.webdriver.common.by import By
    cell = driver.find_element(By.CSS_SELECTOR, f'#{table} tr[data-name="{name}"] td.{cls}')
    return int(cell.get_attribute("data-value"))


def has_row(driver, table: str, name: str) -> bool:
    from selenium.webdriver.common.by import By
    return bool(driver.find_elements(By.CSS_SELECTOR, f'#{table} tr[data-name="{name}"]'))


def test_the_page_in_a_browser(net, ab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    a, b, backend = ab
    driver = browser
    exposed = free_port()
    stop_traffic = threading.Event()
    traffic = None
    try:
        # Log in through the printed URL; the redirect drops the code from the address bar.
        driver.get(login_url(b))
        assert driver.current_url == f"http://{b.rpc}/ui/", driver.current_url
        wait_until("the visor's key", lambda: driver.find_element(By.ID, "visor-key").text == b.pk)
        assert driver.get_cookie(f"skywire_ui_{b.rpc.split(':')[1]}")["httpOnly"] is True
        assert driver.execute_script("return document.cookie") == "", "the session cookie is HttpOnly"

        # Expose a port from the form: `srv status` shows it.
        fill(driver, "expose-form", {"ports": str(exposed), "name": "ui-exposed"})
        submit(driver, "expose-form")
        wait_until("the expose message", lambda: "ui-exposed: exposing" in driver.find_element(By.ID, "expose-message").text)
        assert [i["ports"] for i in b.json("skynet", "srv", "status") if i["name"] == "ui-exposed"] == [[exposed]]
        wait_until("the exposed row", lambda: has_row(driver, "servers", "ui-exposed"))

        # Start a forward from the form: `skynet status` shows it running.
        fill(driver, "forward-form", {"pk": a.pk, "remote": str(backend.port), "local": "0", "name": "ui-fwd"})
        Select(driver.find_element(By.CSS_SELECTOR, "#forward-form select[name=network]")).select_by_value("dmsg")
        submit(driver, "forward-form")
        wait_until("the forward message", lambda: "ui-fwd: 127.0.0.1:" in driver.find_element(By.ID, "forward-message").text)
        fwd = b.json("skynet", "status", "ui-fwd")[0]
        assert fwd["state"] == "running" and fwd["mode"] == "raw-tcp" and fwd["network"] == "dmsg", fwd
        wait_until("the forward row", lambda: has_row(driver, "forwards", "ui-fwd"))

        # Traffic through the forward, bounded in count and time; the page's counters follow it
        # without a reload (server-sent events).
        payload = os.urandom(32 * 1024)
        errors: list[str] = []

        def run_traffic():
            deadline = time.monotonic() + 60
            for _ in range(2000):
                if stop_traffic.is_set() or time.monotonic() > deadline:
                    return
                try:
                    if roundtrip(fwd["local_port"], payload) != payload:
                        errors.append("echo differs")
                except OSError as e:
                    errors.append(str(e))
                    return
                time.sleep(0.02)

        url_before = driver.current_url
        first = row_value(driver, "forwards", "ui-fwd", "bytes-out")
        traffic = threading.Thread(target=run_traffic, daemon=True)
        traffic.start()
        seen = [first]
        for _ in range(3):
            wait_until("the forward's bytes-out to grow",
                       lambda: row_value(driver, "forwards", "ui-fwd", "bytes-out") > seen[-1])
            seen.append(row_value(driver, "forwards", "ui-fwd", "bytes-out"))
        wait_until("the forward's bytes-in to grow", lambda: row_value(driver, "forwards", "ui-fwd", "bytes-in") > 0)
        assert driver.current_url == url_before  # no reload happened
        assert seen == sorted(seen) and seen[-1] > seen[0], seen
        shot = os.environ.get("SKYWIRE_UI_SCREENSHOT")
        if shot:
            driver.save_screenshot(shot)
        stop_traffic.set()
        traffic.join(30)
        assert errors == [], errors
        assert b.json("skynet", "status", "ui-fwd")[0]["bytes_out"] >= seen[-1]

        # Stop the forward from the page: the CLI no longer lists it.
        click_stop(driver, "forwards", "ui-fwd")
        wait_until("the forward row to go", lambda: not has_row(driver, "forwards", "ui-fwd"))
        assert not any(i["name"] == "ui-fwd" for i in b.json("skynet", "status")), b.ok("skynet", "status")

        # A bad port: the page shows the CLI's own message, and nothing is started.
        cli = b.cli("skynet", "srv", "start", "--ports", "70000")
        assert cli.returncode != 0
        fill(driver, "expose-form", {"ports": "70000", "name": ""})
        submit(driver, "expose-form")
        message = wait_until("the error message", lambda: driver.find_element(By.ID, "expose-message").text.startswith("error:")
                             and driver.find_element(By.ID, "expose-message").text)
        assert message == cli.stderr.strip() == "error: port 70000 is out of range (1-65535)", (message, cli.stderr)
        fill(driver, "forward-form", {"pk": a.pk, "remote": "abc", "local": "0", "name": ""})
        submit(driver, "forward-form")
        message = wait_until("the forward error", lambda: driver.find_element(By.ID, "forward-message").text.startswith("error:")
                             and driver.find_element(By.ID, "forward-message").text)
        assert message == 'error: invalid port "abc": expected a number', message

        # Stop the exposed port from the page.
        click_stop(driver, "servers", "ui-exposed")
        wait_until("the exposed row to go", lambda: not has_row(driver, "servers", "ui-exposed"))
        assert not any(i["name"] == "ui-exposed" for i in b.json("skynet", "srv", "status"))
    finally:
        stop_traffic.set()
        if traffic:
            traffic.join(30)
        b.cli("skynet", "stop", "ui-fwd")
        b.cli("skynet", "srv", "stop", "ui-exposed")
