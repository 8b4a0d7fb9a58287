"""The benchmark's own arithmetic: parsing wrk and py-spy output, the seed's
shapes and keys, the auth-cost mixture and the streamed-events window."""

from __future__ import annotations

import random

from bench import auth_cost, profile, seed, wrk, ws
from core import keys

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:1/
WRK_JSON {"requests":10,"duration_us":2000000,"bytes":1,"socket_errors":{"connect":0,"read":1,"write":0,"timeout":2},"latency_us":{"p50":1000,"p90":2000,"p95":3000,"p99":4000,"max":5000,"mean":1.5},"statuses":{"200":6,"429":2,"503":1}}
"""


def test_wrk_result_splits_429_from_other_errors():
    result = wrk.parse(WRK_OUTPUT)
    assert result.rps == 5.0 and result.p99_ms == 4.0
    assert result.ok == 6 and result.rejected == 2
    assert result.other_errors == 1 + 3  # the 503 and three socket errors


def test_seeded_keys_are_valid_deterministic_keys():
    key = seed.user_key(7)
    assert key == seed.user_key(7) != seed.user_key(8)
    assert keys.prefix_of(key) == key[: keys.PREFIX_LENGTH]


def test_seed_shapes_add_up():
    rng = random.Random(1)
    counts = seed._pair_counts(rng, 200, 1000)
    assert sum(counts) == 1000 and min(counts) >= 1
    owners = seed._conversation_owners(rng, seed.TINY)
    assert len(owners) == seed.TINY.conversations
    heavy = {owner for owner in owners if owner <= seed.TINY.users * seed.HEAVY_USERS}
    assert sum(1 for o in owners if o in heavy) == int(seed.TINY.conversations * seed.HEAVY_CONVERSATIONS)


def test_auth_cost_under_load_follows_the_tier_mix():
    measured = {"samples_us": {"hit_local": [10.0] * 100, "hit_shared": [500.0] * 100, "miss": [9000.0] * 10}}
    assert auth_cost.under_load(measured, {"hit_local": 95, "hit_shared": 5, "miss": 0}) == 10.0
    assert auth_cost.under_load(measured, {"hit_local": 10, "hit_shared": 80, "miss": 10}) == 500.0
    assert auth_cost.under_load(measured, {}) is None


def test_profile_summary_from_collapsed_stacks(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "process 1:python;run (/x/site-packages/uvicorn/server.py:1);view (/w/chat/api.py:3) 30\n"
        "process 1:python;run (/x/site-packages/uvicorn/server.py:1);execute (/x/site-packages/psycopg/cursor.py:9) 70\n"
    )
    summary = profile.summarise(raw)
    assert summary["samples"] == 100
    assert dict(summary["self_by_package"]) == {"psycopg": 70.0, "platform:chat": 30.0}
    assert ("execute (psycopg/cursor.py)", 70.0) in summary["inclusive"]


def test_streamed_events_window():
    second = 1_000_000_000
    overlapping = [{"first": 0, "last": 5 * second}, {"first": 1 * second, "last": 6 * second}]
    assert ws._steady_window(overlapping) == (1 * second, 5 * second, "all streams running")
    staggered = [{"first": i * second, "last": i * second + second // 2} for i in range(4)]
    assert ws._steady_window(staggered)[2] == "first delta to last (the streams did not overlap)"


def test_interleaved_rounds_rotate_the_order():
    from bench.stream_overhead import interleaved

    assert list(interleaved(["a", "b", "c"], 3)) == [
        (0, "a"), (0, "b"), (0, "c"),
        (1, "b"), (1, "c"), (1, "a"),
        (2, "c"), (2, "a"), (2, "b"),
    ]  # fmt: skip


def test_spread_text_formats_median_and_range():
    from bench.stream_overhead import spread, spread_text

    assert spread_text(spread([1000.0, 1234.4, 2000.0]), ",.0f") == "1,234 (1,000–2,000)"
    assert spread_text(spread([0.5, 0.25])) == "0 (0–0)"
    assert spread_text(spread([0.5, 0.25]), ".2f") == "0.38 (0.25–0.50)"
