#!/usr/bin/env python3
"""What a nextest run did, from its JUnit file and its log: tests passed per backend, browser
tests, flaky and failed tests, the slowest ones. Exits 1 if a test was skipped (CI requires
every test to run; nextest leaves skipped tests out of the JUnit file, so they are counted from
the log's summary line), if a SQLite variant has no passing PostgreSQL twin, if fewer than 4
browser tests passed, or if a test failed.

Usage: junit_summary.py JUNIT_XML --log NEXTEST_LOG
       junit_summary.py JUNIT_XML --hunt   (list failures only, never exit 1 on them)
"""

import re
import sys
import xml.etree.ElementTree as ET


def skipped_in_log(path):
    """The `M skipped` of nextest's last `Summary` line (None if there is none)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        summaries = [line for line in f if "Summary [" in line]
    if not summaries:
        return None
    found = re.search(r"(\d+) skipped", summaries[-1])
    return int(found.group(1)) if found else 0


def main() -> int:
    path = sys.argv[1]
    hunt = "--hunt" in sys.argv[2:]
    log = sys.argv[sys.argv.index("--log") + 1] if "--log" in sys.argv else None
    cases = []
    for suite in ET.parse(path).getroot().iter("testsuite"):
        binary = suite.get("name", "")
        for case in suite.iter("testcase"):
            name = case.get("name", "")
            state = "passed"
            if case.find("skipped") is not None:
                state = "skipped"
            elif case.find("failure") is not None or case.find("error") is not None:
                state = "failed"
            flaky = len(case.findall("flakyFailure")) + len(case.findall("flakyError"))
            cases.append((binary, name, state, flaky, float(case.get("time", "0"))))

    passed = {(b, n) for b, n, s, _, _ in cases if s == "passed"}
    skipped = [f"{b} {n}" for b, n, s, _, _ in cases if s == "skipped"]
    failed = [f"{b} {n}" for b, n, s, _, _ in cases if s == "failed"]
    flaky = [f"{b} {n} (failed {k}x, then passed)" for b, n, s, k, _ in cases if k and s == "passed"]
    sqlite = {(b, n) for b, n in passed if "::sqlite::" in n}
    postgres = {(b, n) for b, n in passed if "::postgres::" in n}
    browser = {(b, n) for b, n in passed if n.startswith("browser::")}
    twinless = sorted(
        f"{b} {n}" for b, n in sqlite if (b, n.replace("::sqlite::", "::postgres::")) not in postgres
    )

    if hunt:
        for name in failed:
            print(f"FAILED {name}")
        return 0

    print(f"tests: {len(cases)} in all, {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
    print(f"backend variants passed: sqlite={len(sqlite)} postgres={len(postgres)}")
    print(f"browser tests passed: {len(browser)}")
    slowest = sorted(cases, key=lambda c: -c[4])[:8]
    print("slowest: " + ", ".join(f"{n} {t:.1f}s" for _, n, _, _, t in slowest))
    if flaky:
        print(f"FLAKY ({len(flaky)}): each is a finding to fix, see the log above")
        for name in flaky:
            print(f"  {name}")
    problems = []
    if failed:
        problems.append(f"{len(failed)} tests failed: " + ", ".join(failed))
    if skipped:
        problems.append(f"{len(skipped)} tests did not run: " + ", ".join(skipped))
    if log is not None:
        not_run = skipped_in_log(log)
        if not_run is None:
            problems.append(f"no nextest summary line in {log}")
        elif not_run:
            problems.append(f"{not_run} tests were skipped (ignored or filtered out): see {log}")
    if not postgres:
        problems.append("no PostgreSQL test ran")
    if twinless:
        problems.append("SQLite tests whose PostgreSQL variant did not pass: " + ", ".join(twinless))
    if len(browser) < 4:
        problems.append(f"only {len(browser)} browser tests passed (4 expected)")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
