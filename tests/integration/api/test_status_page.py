"""The status page (`GET /status`) in a real headless Chromium against the whole pipeline.

The pipeline is the pytest plugin's `outbox_stack` (auth, api, relay and indexer as
`outbox dev` runs them). The browser is Debian's Chromium at /usr/bin/chromium, driven by
Playwright's Python package (never `playwright install`); `make test` installs it when
missing (.ci/install_browser.sh). Without it the test fails and says why.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from api.routes.status_page import CONTENT_SECURITY_POLICY
from infra.kafka import producer_config
from outbox_pipeline.testing import OutboxStack
from tests.fixtures.api import ApiHandle

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SCREENSHOT = ROOT / "docs" / "status-page.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SETTLE_TIMEOUT_S = 90.0


def _status(stack: OutboxStack) -> dict[str, Any]:
    """`outbox status --json` against the stack (exit 1 means problems were found)."""
    result = stack.outbox("status", "--json")
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _settled(stack: OutboxStack, dead_letters: int) -> dict[str, Any]:
    """Poll `outbox status --json` until the pipeline is idle: nothing waits anywhere,
    Elasticsearch counts what MongoDB counts, the poison event is in the DLQ."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        report = _status(stack)
        idle = (
            report["relay"]["backlog"] == 0
            and report["indexer"]["consumer_lag_total"] == 0
            and report["dlq"]["pending"] == dead_letters
            and all(c["mongo"] == c["elasticsearch"] for c in report["collections"])
        )
        if idle:
            return report
        assert time.monotonic() < deadline, f"the pipeline never settled: {report}"
        time.sleep(0.5)


def _poison(stack: OutboxStack, collection: str) -> None:
    """A message without the CloudEvents headers on an event topic: the indexer
    dead-letters it (an off-contract envelope), so the DLQ has one pending entry."""
    producer = Producer(producer_config(stack.settings.kafka))
    producer.produce(stack.settings.kafka.event_topic(collection), key=b"bad", value=b"not json")
    assert producer.flush(30) == 0


def test_the_status_page_shows_what_outbox_status_reports_in_a_real_browser(
    outbox_stack: OutboxStack, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the status page is tested in Debian's Chromium. "
            "Install it with `apt-get install -y chromium` (as root; `make test` does "
            "this through .ci/install_browser.sh when it can)."
        )
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - only this test needs it

    with outbox_stack.client() as client:
        for collection, n in (("books", 12), ("films", 5)):
            for i in range(n):
                r = client.put(
                    f"/v1/collections/{collection}/documents/{collection[0]}{i}",
                    json={"title": f"{collection} {i}"},
                )
                assert r.status_code == 201, r.text
            outbox_stack.wait_searchable(r)  # the rest: `_settled` below
    _poison(outbox_stack, "films")
    _settled(outbox_stack, dead_letters=1)

    admin, admin_password = outbox_stack.users["admin"]
    writer, writer_password = outbox_stack.users["writer"]
    console_errors: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            # Script errors and CSP violations; refused logins (401, 403) are expected.
            page.on(
                "console",
                lambda m: (
                    console_errors.append(m.text)
                    if m.type == "error" and not m.text.startswith("Failed to load resource")
                    else None
                ),
            )
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.goto(f"{outbox_stack.api_url}/status?every=2")
            page.wait_for_selector("body[data-state=login]")

            page.fill("#username", admin)
            page.fill("#password", "wrong-password")
            page.click("form#login button[type=submit]")
            # Selectors, not wait_for_function: the page's CSP forbids evaluating strings.
            page.wait_for_selector("#login-error:not(:empty)")
            assert page.locator("body").get_attribute("data-state") == "login"

            page.fill("#username", writer)
            page.fill("#password", writer_password)
            page.click("form#login button[type=submit]")
            page.wait_for_selector("#login-error:has-text('not an admin')")

            page.fill("#username", admin)
            page.fill("#password", admin_password)
            page.click("form#login button[type=submit]")
            # Two refreshes: the page updates itself, and the sparklines have two points.
            page.wait_for_selector("body[data-updates]:not([data-updates='1'])")

            def field(name: str) -> Any:
                value = page.locator(f"[data-field='{name}']").first.get_attribute("data-value")
                assert value is not None, name
                return json.loads(value)

            shown = {
                name: field(name)
                for name in (
                    "relay.backlog",
                    "relay.position.event_id",
                    "relay.name",
                    "indexer.consumer_lag_total",
                    "dlq.pending",
                    "dlq.total",
                    "problems",
                )
            }
            rows = {}
            for row in page.locator("#collections tr").all():
                name = row.get_attribute("data-collection")
                rows[name] = {
                    cell.get_attribute("data-field-of"): json.loads(
                        cell.get_attribute("data-value") or "null"
                    )
                    for cell in row.locator("td[data-field-of]").all()
                }
            fresh_samples = json.loads(
                page.locator("#fresh-samples").get_attribute("data-value") or "0"
            )
            buckets = page.locator("#fresh-chart").get_attribute("data-buckets")
            p99_points = page.locator("#fresh-chart circle.dot99").count()
            page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)
        finally:
            context.close()

    report = _status(outbox_stack)
    assert shown == {
        "relay.backlog": report["relay"]["backlog"],
        "relay.position.event_id": report["relay"]["position"]["event_id"],
        "relay.name": report["relay"]["name"],
        "indexer.consumer_lag_total": report["indexer"]["consumer_lag_total"],
        "dlq.pending": report["dlq"]["pending"],
        "dlq.total": report["dlq"]["total"],
        "problems": report["problems"],
    }
    assert shown["dlq.pending"] == 1
    assert shown["relay.position.event_id"] is not None
    assert {
        c["collection"]: {"mongo": c["mongo"], "elasticsearch": c["elasticsearch"]}
        for c in report["collections"]
    } == {
        name: {"mongo": cells["mongo"], "elasticsearch": cells["elasticsearch"]}
        for name, cells in rows.items()
    }
    assert rows["books"]["mongo"] == 12
    assert rows["films"]["mongo"] == 5
    assert all(cells["kafka_lag"] == 0 for cells in rows.values())
    # Every write above was indexed within the window: each is a latency sample.
    assert fresh_samples >= 17
    assert buckets == "20"
    assert p99_points >= 1
    assert console_errors == []  # no CSP violation, no script error
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "status-page.png", SCREENSHOT)


async def test_the_status_page_is_a_static_shell_with_a_strict_content_security_policy(
    api_client: ApiHandle,
) -> None:
    """Anyone gets the same page (it holds no data); it may load only this origin's script,
    style and fetches, and is left out of the OpenAPI document."""
    for path, media_type in (
        ("/status", "text/html"),
        ("/status/status.js", "text/javascript"),
        ("/status/status.css", "text/css"),
    ):
        r = await api_client.client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith(media_type), path
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-frame-options"] == "DENY"
    page = (await api_client.client.get("/status")).text
    assert '<script src="/status/status.js"' in page
    assert "http://" not in page
    assert "https://" not in page
    r = await api_client.client.post("/status")
    assert r.status_code == 405
    schema = (await api_client.client.get("/openapi.json")).json()
    assert not any(path.startswith("/status") for path in schema["paths"])
