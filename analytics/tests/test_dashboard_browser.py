"""The staff dashboard in headless Chromium: sign in as staff, watch the live
figures move when traffic arrives at a real server process."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from agentsflow.testing import (
    ARTIFACTS,
    CHROMIUM_MISSING,
    fresh_database_env,
    manage,
    prepare_platform,
    run_server,
    sign_in,
    watch_page_errors,
)

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(CHROMIUM_MISSING, reason="needs Debian's chromium (CI installs it)"),
]


def wait_until(page, condition, timeout: float = 15.0) -> None:
    """Poll from Python: the page's CSP (rightly) forbids Playwright's eval-based waits."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the dashboard did not update in time"
        page.wait_for_timeout(200)


def requests_since_start(page) -> int:
    return int(re.sub(r"[^0-9]", "", page.inner_text("#fig-requests")) or 0)


def test_staff_watches_figures_move_after_traffic(browser, tmp_path):
    env = {
        **fresh_database_env("dashboard", tmp_path),
        "AGENTSFLOW_VAR_DIR": str(tmp_path),
        "ACCESS_LOG": "false",
        "DASHBOARD_SAMPLE_SECONDS": "2",
    }
    platform = prepare_platform(env)
    manage("createuser", "staff@example.com", "--password", "staff-password-123", "--staff", env=env)
    with run_server(env, log_path=tmp_path / "server.log") as server:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        problems = watch_page_errors(page)
        sign_in(page, server.url + "/dashboard/", "staff@example.com", "staff-password-123")
        wait_until(page, lambda: "since start" in page.inner_text("#fig-requests"))
        assert page.locator("#targets tbody tr").count() == 6
        assert page.is_visible("#models-empty")  # a fresh install says so instead of an empty table
        before = requests_since_start(page)

        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {platform.key}"}) as http:
            statuses = {http.get("/api/models").status_code for _ in range(60)}
        assert statuses == {200}

        wait_until(page, lambda: requests_since_start(page) >= before + 60)
        wait_until(page, lambda: page.inner_text("#fig-rps") not in ("0", "–"))
        wait_until(page, lambda: "%" in page.inner_text("#fig-cache"))
        assert page.locator("#cache-families tbody tr").count() >= 1  # the models family
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert problems == []
        page.close()
