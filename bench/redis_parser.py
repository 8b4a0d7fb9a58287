"""CPU per pipelined Redis round trip with redis-py's pure-Python reply parser
against hiredis's C parser (requirements.txt installs hiredis; redis-py then uses it).

    REDIS_URL=redis://127.0.0.1:6379/11 python -m bench.redis_parser [--rounds 5] [--calls 5000]

The pipeline is the rate limiter's (INCRBY, EXPIRE, GET). CPU time of this
process, so other load on the machine disturbs it little; medians over
interleaved rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import redis
from redis._parsers import _HiredisParser, _RESP3Parser

PARSERS = {"python": _RESP3Parser, "hiredis": _HiredisParser}


def cpu_us_per_pipeline(client: redis.Redis, calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        pipe = client.pipeline(transaction=False)
        pipe.incrby("bench:parser:count", 1)
        pipe.expire("bench:parser:count", 120)
        pipe.get("bench:parser:value")
        pipe.execute()
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_parser", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/11")
    clients = {name: redis.Redis.from_url(url, protocol=3, parser_class=cls) for name, cls in PARSERS.items()}
    clients["python"].set("bench:parser:value", "x" * 100)
    figures: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(args.rounds):
        for name, client in clients.items():
            figures[name].append(cpu_us_per_pipeline(client, args.calls))
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for name, values in figures.items():
        print(f"{name:8} {medians[name]:6.1f} µs CPU per pipeline (min {min(values):.1f}, max {max(values):.1f})")
    print(f"hiredis / python: × {medians['hiredis'] / medians['python']:.2f}")


if __name__ == "__main__":
    main()
