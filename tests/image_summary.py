"""One line at the end of the run saying whether the container image test ran, and how.

The image test needs root, buildah and podman; where they are missing it is skipped, and
this line says so next to the result instead of leaving it among the skips.
"""

from __future__ import annotations

import pytest

IMAGE_TEST = "tests/test_image.py"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reports = [
        report
        for outcome in ("passed", "failed", "error", "skipped")
        for report in terminalreporter.stats.get(outcome, [])
        if getattr(report, "nodeid", "").startswith(IMAGE_TEST)
    ]
    if not reports:
        return
    line = summarise(reports)
    terminalreporter.write_line(line, red="FAILED" in line, yellow="skipped" in line)


def summarise(reports: list[pytest.TestReport]) -> str:
    failed = [r for r in reports if r.failed]
    if failed:
        return f"image test: ran and FAILED ({failed[0].nodeid})"
    skipped = [r for r in reports if r.skipped]
    if skipped and not any(r.passed and r.when == "call" for r in reports):
        longrepr = skipped[0].longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        return reason if reason.startswith("image test") else f"image test: skipped: {reason}"
    # The test records how it got the image first, then adds the SIGTERM timing: last wins.
    notes = [str(v) for r in reports for k, v in r.user_properties if k == "image"]
    how = notes[-1] if notes else "image used"
    return f"image test: ran and passed ({how})"
