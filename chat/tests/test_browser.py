"""The chat page in headless Chromium (Debian's, driven by Playwright): sign in,
send a message, watch the reply stream in over the WebSocket."""

from __future__ import annotations

import json

import pytest

from agentsflow.testing import (
    ARTIFACTS,
    CHROMIUM_MISSING,
    fresh_database_env,
    prepare_platform,
    run_server,
    sign_in,
    watch_page_errors,
)

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(CHROMIUM_MISSING, reason="needs Debian's chromium (CI installs it)"),
]


def test_chat_page_streams_a_reply(browser, upstream, tmp_path):
    models = [
        {
            "name": "echo",
            "provider": "fake",
            "upstream_model": "echo+tps-30",
            "context_window": 4096,
            "max_output_tokens": 256,
        }
    ]
    env = {
        **fresh_database_env("browser", tmp_path),
        "AGENTSFLOW_VAR_DIR": str(tmp_path),
        "EXTRA_PROVIDERS": "fake",
        "FAKE_BASE_URL": upstream,
        "AGENTSFLOW_MODELS": json.dumps(models),
        "ACCESS_LOG": "false",
    }
    platform = prepare_platform(env)
    with run_server(env, log_path=tmp_path / "server.log") as server:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        problems = watch_page_errors(page)
        sign_in(page, server.url + "/", platform.email, platform.password)
        page.wait_for_selector("#input")
        page.select_option("#model", "echo")
        page.fill("#input", "hello from the browser")
        page.keyboard.press("Enter")
        page.wait_for_selector("li.msg.assistant .meta button", timeout=20_000)  # the reply finished

        assert page.inner_text("li.msg.user .body") == "hello from the browser"
        assert page.inner_text("li.msg.assistant .body") == "hello from the browser"
        assert page.inner_text("#conversations li.active") == "hello from the browser"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat-page.png"))
        assert problems == []
        page.close()
