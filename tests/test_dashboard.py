"""The dashboard at `/`: its pages in process, then end to end in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from somafractalmemory.memories import services, tenancy
from somafractalmemory.memories.jobs import consolidation
from somafractalmemory.memories.models import Memory
from tests.conftest import Api, Live

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def store(api: Api, namespace: str, text: str, **fields: Any) -> str:
    return str(
        api.ok("POST", "/memory/store", {"content": text, "namespace": namespace, **fields})["id"]
    )


def page(api: Api, path: str, status: int = 200) -> str:
    response = api.client.get(path)
    assert response.status_code == status, response.content[:500]
    return str(response.content.decode())


def test_home_counts_namespaces_by_type_and_level_and_draws_activity(
    api: Api, namespace: str
) -> None:
    store(api, namespace, "Ivan moved to Porto in May")
    store(api, namespace, "Ivan's new office is near the river")
    store(api, namespace, "Ivan speaks Portuguese", type="semantic")
    html = page(api, "/")
    row = re.search(rf"<tr>\s*<td><a [^>]*>{namespace}</a></td>.*?</tr>", html, re.S)
    assert row, html[:2000]
    assert "episodic 2" in row.group(0) and "semantic 1" in row.group(0)
    assert "L0 3" in row.group(0)
    bars = re.findall(r'<rect class="day"[^>]*><title>([\d-]+): (\d+)</title>', html)
    assert len(bars) == 30
    today = datetime.now(UTC).date().isoformat()
    assert dict(bars)[today] and int(dict(bars)[today]) >= 3


def test_search_shows_the_score_breakdown_and_does_not_reinforce(api: Api, namespace: str) -> None:
    wanted = store(api, namespace, "Judith keeps her passport in the blue drawer")
    store(api, namespace, "Judith's train leaves at 7:40")
    html = page(api, f"/search?q=where+is+Judith%27s+passport&namespace={namespace}")
    assert f'href="/memory/{wanted}"' in html
    first = html.index('class="hit"')
    assert html.index(wanted) > first - 200  # the passport is the first hit
    for part in ("relevance", "recency", "importance", "retention"):
        assert part in html
    services.flush_reinforcements()
    assert Memory.objects.get(id=wanted).access_count == 0


def test_memory_page_shows_links_hierarchy_and_graph(api: Api, namespace: str) -> None:
    start = datetime(2025, 4, 1, tzinfo=UTC)
    ids = [
        store(
            api,
            namespace,
            f"Sprint {i}: the migration to Postgres slipped again",
            created_at=(start + timedelta(days=i)).isoformat(),
        )
        for i in range(5)
    ]
    other = store(api, namespace, "The database team hired a new DBA")
    api.ok("POST", f"/memory/{ids[0]}/links", {"target": other, "kind": "related"})
    consolidation.start(namespace, tenant="default", wait=True)
    parents = api.ok("GET", f"/memory/{ids[0]}/parents")["memories"]
    assert parents
    html = page(api, f"/memory/{ids[0]}")
    assert "Sprint 0" in html and f'href="/memory/{parents[0]["id"]}"' in html  # the tree
    assert '<span class="pill">related</span>' in html and f'href="/memory/{other}"' in html
    circles = re.findall(r"<circle ", html[html.index('id="graph"') :])
    assert len(circles) >= 3  # itself, its parent, the related memory (and follows links)
    assert "Sprint 1" in page(api, f"/memory/{parents[0]['id']}")  # its children listed


def test_memory_page_shows_its_history_and_why_it_is_hidden(api: Api, namespace: str) -> None:
    key = {"key": "alice/city", "type": "semantic"}
    lisbon = store(api, namespace, "Alice lives in Lisbon", valid_from="2024-01-01", **key)
    berlin = store(api, namespace, "Alice lives in Berlin", valid_from="2024-06-01", **key)
    old = page(api, f"/memory/{lisbon}")
    assert '<span class="pill" id="status">no_longer_valid</span>' in old
    table = old[old.index('id="history"') :]
    assert table.index("Lisbon") < table.index("Berlin") and f'href="/memory/{berlin}"' in table
    assert "2024-01-01 00:00:00 \u2013 2024-06-01 00:00:00" in old  # its validity
    current = page(api, f"/memory/{berlin}")
    assert 'id="status"' not in current and "alice/city" in current
    brief = store(api, namespace, "A note that expires", ttl_seconds=3600)
    html = page(api, f"/memory/{brief}")
    assert 'id="history"' not in html and "<th>expires</th><td>20" in html


def test_unknown_memory_is_an_error_page(api: Api) -> None:
    html = page(api, "/memory/mem_nothing", status=404)
    assert "memory_not_found" in html


def test_login_by_key_when_auth_is_required_and_tenants_stay_apart(
    db: None, settings_env: Any, namespace: str
) -> None:
    settings_env(auth="required")
    mine, theirs = (f"t{uuid.uuid4().hex[:8]}" for _ in range(2))
    for name in (mine, theirs):
        tenancy.create_tenant(name)
    my_key = tenancy.create_key(mine, ["read", "write"]).secret
    their_key = tenancy.create_key(theirs, ["read"]).secret
    secret = store(Api(my_key), namespace, "The safe combination is 31-7-44")

    browser = Api()
    response = browser.client.get("/")
    assert response.status_code == 302 and response["Location"] == "/login"
    refused = browser.client.post("/login", {"key": "sfm_wrong"})
    assert refused.status_code == 401 and b"login-error" in refused.content

    assert browser.client.post("/login", {"key": their_key}).status_code == 302
    assert namespace not in page(browser, "/")
    assert "memory_not_found" in page(browser, f"/memory/{secret}", status=404)
    assert "31-7-44" not in page(browser, "/search?q=safe+combination")

    browser.client.get("/logout")
    assert browser.client.post("/login", {"key": my_key}).status_code == 302
    assert namespace in page(browser, "/")
    assert "31-7-44" in page(browser, f"/memory/{secret}")


# -- in a real browser ------------------------------------------------------------------


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed (make test installs them)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        # A web page from elsewhere for the attack test: the name resolves to this machine.
        "--host-resolver-rules=MAP evil.example 127.0.0.1",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


@pytest.mark.slow
def test_dashboard_in_headless_chromium(live: Live, chromium: Any, tmp_path: Path) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    from somafractalmemory.client import Memory as Client

    space = f"ui-{uuid.uuid4().hex[:8]}"
    with Client(live.base) as memory:
        memory.remember("Kenji waters the bonsai every Sunday morning", namespace=space)
        memory.remember(
            "Kenji's bonsai is a 30-year-old juniper",
            namespace=space,
            type="semantic",
            importance=0.8,
        )
    wait = WebDriverWait(chromium, 30)
    chromium.get(live.base + "/")
    assert "SomaFractalMemory" in chromium.title
    assert space in chromium.find_element(By.ID, "namespaces").text
    box = chromium.find_element(By.CSS_SELECTOR, "header input[type=search]")
    box.send_keys("how old is Kenji's bonsai?")
    box.submit()
    wait.until(ready.presence_of_element_located((By.ID, "results")))
    assert "relevance" in chromium.find_element(By.ID, "results").text
    first = chromium.find_elements(By.CSS_SELECTOR, "a.hit")[0]
    assert "juniper" in first.text
    first.click()
    wait.until(ready.presence_of_element_located((By.ID, "graph")))
    assert "juniper" in chromium.find_element(By.ID, "content").text
    shot = tmp_path / "memory.png"
    assert chromium.save_screenshot(str(shot))
    image = Image.open(shot).convert("RGB")
    assert image.size[0] >= 1000 and image.size[1] >= 600
    colours = image.getcolors(maxcolors=1 << 20) or []
    most = max(n for n, _ in colours)
    # Rendered: many colours (text, pills, graph), and the background not the whole page.
    assert len(colours) > 50 and most < 0.97 * image.size[0] * image.size[1]


@pytest.mark.slow
def test_a_web_page_elsewhere_cannot_drive_the_embedded_default(
    live: Live, chromium: Any, tmp_path: Path
) -> None:
    """A page from another site in the user's browser tries a no-preflight `fetch` (a JSON
    body sent as text/plain) to plant a memory, and DNS rebinding to read them."""
    import functools
    import http.server
    import threading
    from urllib.parse import urlsplit

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from somafractalmemory.client import Memory as Client

    space = f"attack-{uuid.uuid4().hex[:8]}"
    with Client(live.base) as memory:
        memory.remember("The safe's code is 31-7-44", namespace=space)
    target = f"{live.base}/api/v2/memory/store"
    body = '{"content": "planted by a web page", "namespace": "' + space + '"}'
    (tmp_path / "index.html").write_text(
        "<title>loading</title><script>"
        f"fetch({target!r}, {{method: 'POST', mode: 'no-cors',"
        f" headers: {{'Content-Type': 'text/plain'}}, body: {body!r}}})"
        ".then(() => document.title = 'sent', () => document.title = 'sent');"
        "</script>"
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    site = http.server.HTTPServer(("127.0.0.1", 0), handler)  # one request at a time
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        chromium.get(f"http://evil.example:{site.server_address[1]}/index.html")
        WebDriverWait(chromium, 30).until(lambda d: d.title == "sent")
        port = urlsplit(live.base).port
        chromium.get(f"http://evil.example:{port}/api/v2/memory?namespace={space}")
        shown = chromium.find_element(By.TAG_NAME, "body").text
        assert "foreign_origin" in shown and "31-7-44" not in shown
    finally:
        site.shutdown()
        site.server_close()
    with Client(live.base) as memory:
        held = [m.content for m in memory.list(namespace=space)]
    assert held == ["The safe's code is 31-7-44"]  # nothing planted
