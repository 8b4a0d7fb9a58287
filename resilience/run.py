"""Run the resilience suites and print their table: scenario, figure, pass/fail.

    python -m resilience.run [faults|abuse|all] [--markdown] [-- extra pytest arguments]

Runs pytest over the suite's files (long tests included) with a JUnit XML report,
then reads each test's ``record_property("scenario", ...)`` and
``record_property("figure", ...)`` from it. Exits with pytest's status. The suites
need PostgreSQL (DATABASE_URL) and start their own servers; see README, "Resilience".
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent / "tests"


SUITES = {"faults": ["test_faults*.py"], "abuse": ["test_abuse*.py"]}  # test_tools.py tests the tools


def suite_files(group: str) -> list[str]:
    patterns = [p for name, globs in SUITES.items() if group in (name, "all") for p in globs]
    return sorted(str(path.relative_to(ROOT)) for pattern in patterns for path in TESTS.glob(pattern))


@dataclass(frozen=True)
class Row:
    scenario: str
    figure: str
    result: str  # pass, FAIL, ERROR or skip
    seconds: float
    note: str = ""


def _scenario_from_name(name: str) -> str:
    """``test_f3_postgres_stopped[x]`` -> ``F3 postgres stopped [x]``; ``test_abuse1_…`` -> ``A1 …``."""
    base, _, params = name.partition("[")
    words = base.removeprefix("test_").split("_")
    if numbered := re.fullmatch(r"([a-z])[a-z]*(\d+)", words[0]):
        words[0] = numbered[1].upper() + numbered[2]
    text = " ".join(words)
    return f"{text} [{params}" if params else text


def _in_order(row: Row) -> list:
    """F2 before F10: numbers compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", row.scenario)]


def read_report(path: Path) -> list[Row]:
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314 (the report pytest just wrote)
        properties = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        result, note = "pass", ""
        for tag, label in (("failure", "FAIL"), ("error", "ERROR"), ("skipped", "skip")):
            element = case.find(tag)
            if element is not None:
                result = label
                note = (element.get("message") or "").strip().splitlines()[0][:200] if element.get("message") else ""
                break
        rows.append(
            Row(
                scenario=properties.get("scenario") or _scenario_from_name(case.get("name", "?")),
                figure=properties.get("figure", ""),
                result=result,
                seconds=float(case.get("time") or 0),
                note=note,
            )
        )
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: list[Row]) -> str:
    """A Markdown table (also readable as plain text)."""
    lines = ["| scenario | figure | result |", "| --- | --- | --- |"]
    for row in rows:
        figure = row.figure or row.note
        if row.result != "pass" and row.note and row.figure:
            figure = f"{row.figure} — {row.note}"
        lines.append(f"| {_cell(row.scenario)} | {_cell(figure)} | {row.result} |")
    passed = sum(row.result == "pass" for row in rows)
    lines.append("")
    lines.append(f"{passed} of {len(rows)} passed in {sum(row.seconds for row in rows):.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(prog="python -m resilience.run", description=__doc__.splitlines()[0])
    parser.add_argument("group", nargs="?", default="all", choices=["faults", "abuse", "all"])
    parser.add_argument("--report", type=Path, help="where to write the JUnit XML (default var/resilience-GROUP.xml)")
    args = parser.parse_args(argv)

    files = suite_files(args.group)
    if not files:
        print(f"no test files for {args.group!r} in {TESTS}", file=sys.stderr)
        return 4
    report = args.report or ROOT / "var" / f"resilience-{args.group}.xml"
    report.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pytest", *files, "-p", "no:cacheprovider", f"--junitxml={report}"]
    command += ["-m", "", "-o", "junit_family=xunit1", *extra]  # every test, the long ones too
    status = subprocess.call(command, cwd=ROOT)
    if not report.exists():
        return status or 1
    print()
    print(render(sorted(read_report(report), key=_in_order)))
    return status


if __name__ == "__main__":
    sys.exit(main())
