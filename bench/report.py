"""The benchmark's table: printed, and written as bench/results/latest.json and latest.md."""

from __future__ import annotations

from pathlib import Path

import orjson

HEADER = (
    "figure",
    "req/s (or value)",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "429 / other errors",
    "× ceiling",
    "CPU ms/req",
    "goal",
    "",
)


def _n(value, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _verdict(passed) -> str:
    return "—" if passed is None else ("pass" if passed else "**miss**")


def _row(
    figure: str, value: str, goal: str, passed, *, p50="", p95="", p99="", errors="", ratio="—", cpu=""
) -> tuple[str, ...]:
    """One row in HEADER's order; the columns a figure has no value for stay empty."""
    return (figure, value, p50, p95, p99, errors, ratio, cpu, goal, _verdict(passed))


def cpu_split(stream: dict) -> str:
    """The CPU each kind of process used while streaming, as a sentence ("" for
    results from before the split was recorded)."""
    split = stream.get("cpu_seconds_by_process")
    if not split:
        return ""
    return " CPU seconds while streaming: " + ", ".join(f"{name} {sec:.1f}" for name, sec in split.items()) + "."


def rows(results: dict) -> list[tuple[str, ...]]:
    """One row per figure, in the issue's order."""
    out = []
    figures = {f["id"]: f for f in results.get("http", [])}
    ceiling = figures.get("ceiling", {}).get("rps")
    for figure in results.get("http", []):
        if figure.get("skipped"):
            out.append(_row(figure["label"], f"skipped: {figure['skipped']}", "", None, ratio=""))
            continue
        out.append(
            _row(
                figure["label"],
                _n(figure["rps"]),
                figure["goal"] or "—",
                figure["passed"],
                p50=_n(figure["p50_ms"], 1),
                p95=_n(figure["p95_ms"], 1),
                p99=_n(figure["p99_ms"], 1),
                errors=f"{figure['errors_429']} / {figure['errors_other']}",
                ratio=f"{figure['rps'] / ceiling:.2f}" if ceiling else "—",
                cpu=_n(figure.get("cpu_ms_per_request"), 2),
            )
        )
    stream = results.get("stream")
    if stream:
        latency = stream["latency_ms"]
        out.append(
            _row(
                f"6. streamed events/s over WebSockets ({stream['sockets']} sockets × "
                f"{stream['offered_events_per_second'] // max(stream['sockets'], 1)} tokens/s offered)",
                _n(stream["events_per_second"]),
                "≥ 10,000 events/s, p99 ≤ 100 ms",
                stream.get("passed"),
                p50=_n(latency["p50"], 1),
                p95=_n(latency["p95"], 1),
                p99=_n(latency["p99"], 1),
                errors=f"— / {stream['deltas_expected'] - stream['deltas_received']} missing",
            )
        )
    held = results.get("held")
    if held:
        out.append(
            _row(
                "6. WebSockets held at once; platform RSS (PSS) while held",
                f"{held['held']:,} held; {held['memory_held']['rss_mb']:,.0f} MB "
                f"({held['memory_held']['pss_mb']:,.0f} MB)",
                "≥ 10,000, < 1 GB RSS",
                held.get("passed"),
                errors=f"— / {held['failed']}",
            )
        )
    auth = results.get("auth")
    if auth:
        out.append(
            _row(
                "API-key auth overhead, p50 under the loadtest's tier mix (memory; Redis; database tier)",
                (f"{auth['under_load_p50_us'] / 1000:.3f} ms " if auth.get("under_load_p50_us") else "")
                + f"({auth['memory_tier_p50_us'] / 1000:.3f}; {auth['redis_tier_p50_us'] / 1000:.3f}; "
                f"{auth['database_p50_us'] / 1000:.3f} ms)",
                "≤ 1 ms at p50",
                auth.get("passed"),
            )
        )
    cache = results.get("cache")
    if cache:
        ratio = cache["cache"]["ratio"]
        out.append(
            _row(
                "cache hit ratio, `manage.py loadtest` mix",
                f"{100 * ratio:.1f} %" if ratio is not None else "—",
                "≥ 90 %",
                cache.get("passed"),
                p50=_n(cache["loadtest"]["p50_ms"], 1),
                p99=_n(cache["loadtest"]["p99_ms"], 1),
                errors=f"{cache['loadtest']['errors_429']} / {cache['loadtest']['errors_other']}",
            )
        )
    errors = results.get("errors")
    if errors:
        out.append(
            _row(
                "errors other than 429 (all HTTP figures and the loadtest)",
                f"{errors['other']} of {errors['requests']:,}",
                "0",
                errors.get("passed"),
            )
        )
    return out


def markdown_table(table: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(" --- " for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table]
    return "\n".join(lines)


def text_table(table: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(row[i])) for row in [HEADER, *table]) for i in range(len(HEADER))]
    widths[0] = min(widths[0], 70)

    def fmt(row) -> str:
        cells = []
        for i, cell in enumerate(row):
            cell = str(cell).replace("**", "")
            if i == 0 and len(cell) > widths[0]:
                cell = cell[: widths[0] - 1] + "…"
            cells.append(cell.ljust(widths[i]) if i in (0, 8) else cell.rjust(widths[i]))
        return "  ".join(cells)

    return "\n".join([fmt(HEADER), "-" * (sum(widths) + 2 * len(widths)), *(fmt(r) for r in table)])


def machine_line(machine: dict) -> str:
    return (
        f"{machine['date']}, commit {machine['git_sha']} ({machine['git_branch']}); "
        f"{machine['nproc']} cores ({machine['cpu_model']}), {machine['memory_gb']} GB RAM, "
        f"load average {' '.join(map(str, machine['load_average_before']))} before and "
        f"{' '.join(map(str, machine.get('load_average_after', [])))} after; Python {machine['python']}, "
        f"PostgreSQL {machine['postgres']}, Redis {machine['redis']}"
    )


def markdown(results: dict) -> str:
    machine, setup = results["machine"], results["setup"]
    parts = [
        "# Benchmark results",
        "",
        f"`{setup['command']}`: {machine_line(machine)}.",
        "",
        f"Platform: {setup['topology']}; production settings (DEBUG off), PostgreSQL, Redis, access log on. "
        f"Data: {setup['seed']}. Load: wrk {setup['wrk']} on the same cores, "
        f"{setup['rounds']} interleaved round(s) of {setup['seconds']} s per figure (medians shown), "
        f"{setup['keys']} API keys rotating per request. {setup['limits']}",
        "",
        markdown_table(rows(results)),
        "",
        "The machine is shared with other engineers' test runs and the load generator runs on the same two "
        "cores: read the figures as ratios between rows of one run, not as absolute capacities. "
        "CPU ms/req is the CPU time of the platform's own processes (nginx, granian, uvicorn; not PostgreSQL, "
        "Redis or wrk) per request, which other load on the machine disturbs much less than the rates.",
        "",
    ]
    notes = [f"- {f['label']}: {f['note']}" for f in results.get("http", []) if f.get("note")]
    stream = results.get("stream")
    if stream:
        notes.append(
            "- streamed events: every socket sends one message to a model streaming time-stamped tokens; latency "
            "is the client's receive time minus the fake upstream's send time of that token (wall clock, same "
            f"machine), over the window: {stream['window']} ({stream['window_seconds']} s); "
            f"all deltas: p50 {stream['latency_all_ms']['p50']} ms, "
            f"p99 {stream['latency_all_ms']['p99']} ms; send to first delta p50 "
            f"{stream['send_to_first_delta_ms']['p50']} ms; finals {stream['finals']}." + cpu_split(stream)
        )
    held = results.get("held")
    if held:
        notes.append(
            f"- WebSockets held: {held['held']:,} of {held['requested']:,} opened in {held['open_seconds']} s "
            f"({held['client_processes']} client processes), server gauge {held['server_gauge']}, "
            f"{held['still_open_at_close']:,} still open when closed; RSS {held['memory_before']['rss_mb']} MB "
            f"before, {held['memory_held']['rss_mb']} MB held ({held['per_socket_kb']} KB a socket, "
            f"{held['memory_held']['processes']} processes: {held['servers']}); open-file limit of the "
            f"ASGI workers {held['asgi_open_files_limit']}, nginx {held['nginx_open_files_limit'] or '(no nginx)'}; "
            f"failures {held['failures'] or 'none'}."
        )
    cache = results.get("cache")
    if cache:
        families = ", ".join(
            f"{name} {100 * row['ratio']:.1f} % ({row['hit_local']} memory, {row['hit_shared']} Redis, "
            f"{row['miss']} misses)"
            for name, row in cache["cache"]["families"].items()
        )
        notes.append(
            f"- cache: {cache['loadtest']['requests']:,} requests, {cache['loadtest']['rps']} req/s, "
            f"{cache['loadtest']['concurrency']} clients; by family: {families}."
        )
    if notes:
        parts += ["## Notes", "", *notes, ""]
    profiles = results.get("profiles") or {}
    if profiles:
        parts += ["## Profiles of what missed its goal (py-spy, every worker of the server)", ""]
        for name, profile in profiles.items():
            if profile.get("error"):
                parts += [f"### {name}", "", f"py-spy failed: {profile['error']}", ""]
                continue
            selfs = ", ".join(f"{pkg} {pct} %" for pkg, pct in profile["self_by_package"])
            inclusive = "\n".join(f"  - {fn}: {pct} %" for fn, pct in profile["inclusive"])
            parts += [
                f"### {name} ({profile['samples']} samples, {profile['server']})",
                "",
                f"Self time by package: {selfs}.",
                "",
                "On the stack (inclusive):",
                "",
                inclusive,
                "",
            ]
    return "\n".join(parts)


def write(results: dict, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "latest.json", directory / "latest.md"
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    md_path.write_text(markdown(results))
    return json_path, md_path
