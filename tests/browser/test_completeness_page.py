"""The completeness page in a real headless Chromium, after real traffic.

A real collector process (short grace period, a token) takes events from a real
:class:`EventClient` and from a second producer whose sequence numbers 3..4 never
arrive; the browser loads ``GET /`` with the token as basic auth, and the test reads
the DOM: event types, the hour, counts, the cell that turns ``lost`` once the grace
period passes, the drill-downs, the producers and versions tables, and that the page
fits a phone's width. Screenshots land in the artifact directory.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import requests
from selenium import webdriver
from selenium.webdriver.common.by import By
from support import SCHEMAS, wait_for

from spotify_events import EventClient
from spotify_events.collector.buckets import hour_label
from spotify_events.collector.process import CollectorProcess
from spotify_events.encoding import EventEncoder
from spotify_events.schemas import SchemaRegistry
from spotify_events.wire import CONTENT_TYPE, Envelope, WireBatch, encode_batch

TOKEN = "browser-test-token"
END_SONG = "spotify.events.playback.EndSong"
PAGE_VIEW = "spotify.events.web.PageView"
SEARCH = "spotify.events.search.SearchQuery"


def end_song(i: int) -> dict[str, Any]:
    return {
        "user_id": f"u{i}",
        "track_id": f"t{i}",
        "ms_played": 31_000,
        "reason_start": "CLICKROW",
        "reason_end": "TRACKDONE",
        "platform": "web",
        "shuffle": False,
        "offline": False,
    }


def page_view(i: int) -> dict[str, Any]:
    return {"user_id": None, "session_id": f"s{i}", "page_uri": "spotify:album:x", "load_ms": 80}


def post_with_gap(url: str, millis: int) -> None:
    """A producer whose SearchQuery numbers 3 and 4 never arrive (it announces 6 next)."""
    encoder = EventEncoder(SchemaRegistry(SCHEMAS).get(SEARCH))
    record = {"user_id": "u", "query": "jazz", "result_count": 1, "latency_ms": 2.0}
    envelopes = [
        Envelope(seq, SEARCH, encoder.schema.fingerprint, millis, encoder.encode(record))
        for seq in (1, 2, 5)
    ]
    batch = WireBatch(
        "producer-with-a-gap",
        envelopes,
        {SEARCH: 6},
        [],
        service="search-api",
        host="search-1",
        sdk_version="0.0.9",
    )
    response = requests.post(
        f"{url}/v1/batches",
        data=encode_batch(batch),
        headers={"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 200 and response.json()["accepted"] == 3


def grid_cells(browser: webdriver.Chrome) -> dict[str, dict[str, str]]:
    """Event type -> the data attributes of its (single) filled cell."""
    out = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "tr[data-event-type]"):
        for cell in row.find_elements(By.CSS_SELECTOR, "td[data-state]"):
            out[row.get_attribute("data-event-type") or ""] = {
                k: cell.get_attribute(k) or ""
                for k in ("data-state", "data-hour", "data-received", "data-lost", "title")
            }
    return out


def test_page_after_real_traffic_shows_types_hours_counts_and_a_lost_cell(
    browser: webdriver.Chrome, tmp_path: Path, artifacts: Path
) -> None:
    collector = CollectorProcess(
        tmp_path / "data", SCHEMAS, ["--token", TOKEN, "--grace-period", "1"]
    ).start()
    try:
        now = time.time()
        millis = int(now * 1000)
        with EventClient(
            endpoint=collector.endpoint,
            queue_path=str(tmp_path / "events.db"),
            schemas=str(SCHEMAS),
            token=TOKEN,
            service="checkout",
        ) as client:
            for i in range(30):
                client.log(END_SONG, end_song(i), timestamp=now)
            for i in range(10):
                client.log(PAGE_VIEW, page_view(i), timestamp=now)
            assert client.flush(timeout=60)
        post_with_gap(collector.url, millis)

        # What a browser sends once the user typed the token into the basic-auth prompt.
        credentials = base64.b64encode(f"ops:{TOKEN}".encode()).decode()
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {credentials}"}}
        )

        def lost_cell_shown() -> bool:
            browser.get(collector.url + "/")
            return grid_cells(browser).get(SEARCH, {}).get("data-state") == "lost"

        assert wait_for(lost_cell_shown, timeout=60, interval=0.25), browser.page_source[:2000]

        assert browser.title == "spotify-events completeness"
        cells = grid_cells(browser)
        hour = hour_label(millis // 3_600_000)
        assert set(cells) == {END_SONG, PAGE_VIEW, SEARCH}
        assert {c["data-hour"] for c in cells.values()} == {hour}
        assert browser.find_elements(By.CSS_SELECTOR, f'thead th[data-hour="{hour}"]')
        assert (cells[END_SONG]["data-state"], cells[END_SONG]["data-received"]) == ("open", "30")
        assert (cells[PAGE_VIEW]["data-state"], cells[PAGE_VIEW]["data-received"]) == ("open", "10")
        assert (cells[SEARCH]["data-received"], cells[SEARCH]["data-lost"]) == ("3", "2")
        assert "lost: 2" in cells[SEARCH]["title"]  # the hover text

        # Drill down: tap the lost cell, its counts and gap ranges open.
        lost = browser.find_element(By.CSS_SELECTOR, 'td[data-state="lost"]')
        assert not lost.find_element(By.CSS_SELECTOR, "dl").is_displayed()
        lost.find_element(By.CSS_SELECTOR, "summary").click()
        assert lost.find_element(By.CSS_SELECTOR, "dl").is_displayed()
        assert "3..4" in lost.find_element(By.CSS_SELECTOR, "ul.gaps").text

        producers = {
            row.get_attribute("data-producer"): row
            for row in browser.find_elements(By.CSS_SELECTOR, "tr[data-producer]")
        }
        assert len(producers) == 2
        gap_row = producers["producer-with-a-gap"]
        assert gap_row.find_elements(By.TAG_NAME, "td")[0].text == "search-api"
        assert gap_row.find_elements(By.TAG_NAME, "td")[2].text == "0.0.9"
        gap_row.find_element(By.CSS_SELECTOR, "summary").click()
        assert "SearchQuery: 3..4 (2 lost, 0 open)" in gap_row.text
        [sdk_row] = [r for pid, r in producers.items() if pid != "producer-with-a-gap"]
        assert sdk_row.find_elements(By.TAG_NAME, "td")[0].text == "checkout"
        versions = browser.find_elements(By.CSS_SELECTOR, "#versions tr[data-sdk-version]")
        lossy = {v.get_attribute("data-sdk-version"): v.get_attribute("class") for v in versions}
        assert lossy["0.0.9"] == "lost" and len(lossy) == 2

        assert browser.find_element(By.ID, "total-lost").text == "lost: 2"
        browser.save_screenshot(str(artifacts / "completeness-page.png"))

        # A phone: the page itself never scrolls sideways (wide tables scroll in place).
        browser.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
        )
        browser.get(collector.url + "/")
        assert browser.execute_script("return window.innerWidth") == 390
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0
        browser.save_screenshot(str(artifacts / "completeness-page-phone.png"))
    finally:
        collector.stop()
