"""Turning figures into text: terminal tables, Markdown tables, and result files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.meta import now_stamp
from bench.stats import Distribution, Summary

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def fmt_number(value: float | None, digits: int = 0) -> str:
    """``12,345`` / ``3.14``; an em dash for a missing figure."""
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def fmt_auto(value: float | None) -> str:
    """Few significant digits: 123,457 / 123.5 / 1.23 / 0.012."""
    if value is None:
        return "—"
    size = abs(value)
    digits = 0 if size >= 1000 else 1 if size >= 100 else 2 if size >= 1 else 3
    return fmt_number(value, digits)


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned lines: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return [line(row) for row in rows]


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """An aligned table with a header line and a rule under it."""
    lines = aligned([header, *rows])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def markdown_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    align = ["---", *("---:" for _ in header[1:])]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def latency_rows(summary: Summary) -> list[list[str]]:
    rows = []
    named: list[tuple[str, Distribution | None]] = [
        ("time to first byte", summary.ttfb_ms),
        ("time to first token", summary.ttft_ms),
        ("inter-token latency", summary.itl_ms),
        ("end-to-end latency", summary.e2e_ms),
    ]
    for name, dist in named:
        if dist is None:
            continue
        figures = (dist.mean, dist.p50, dist.p90, dist.p99, dist.max)
        rows.append([name, fmt_number(dist.count), *(fmt_auto(v) for v in figures)])
    return rows


def render_summary(summary: Summary, context: Sequence[tuple[str, str]]) -> str:
    """The terminal report of one run: context lines, figures, latency percentiles."""
    s = summary
    errors = ", ".join(f"{k}: {v}" for k, v in s.errors.items()) or "none"
    lines = [
        *context,
        ("", ""),
        ("requests", f"{fmt_number(s.requests)} (ok {fmt_number(s.ok)}; errors: {errors})"),
        ("duration", f"{fmt_auto(s.duration_s)} s, {fmt_auto(s.requests_per_s)} requests/s"),
    ]
    if s.tokens:
        lines.append(("tokens", f"{fmt_number(s.tokens)}, {fmt_auto(s.tokens_per_s)} tokens/s"))
    if s.events:
        lines.append(("events", f"{fmt_number(s.events)}, {fmt_auto(s.events_per_s)} events/s"))
    if s.server_cpu_s is not None:
        per = f"{fmt_auto(s.server_cpu_us_per_request)} µs/request"
        if s.events:
            per = f"{fmt_auto(s.server_cpu_us_per_event)} µs/event, {per}"
        util = s.server_cpu_s / s.duration_s if s.duration_s > 0 else 0.0
        lines.append(("server CPU", f"{fmt_auto(s.server_cpu_s)} s ({util:.0%} of a core); {per}"))
    if s.client_cpu_util is not None:
        lines.append(("client CPU", f"{s.client_cpu_util:.0%} of a core"))
    width = max(len(k) for k, _ in lines)
    parts = [f"{k.ljust(width)}  {v}".rstrip() for k, v in lines]
    latency = latency_rows(s)
    if latency:
        header = ["latency (ms)", "count", "mean", "p50", "p90", "p99", "max"]
        parts += ["", table(latency, header)]
    return "\n".join(parts)


def write_result(doc: dict[str, Any], name: str, directory: Path | None = None) -> Path:
    """Write ``doc`` as ``<directory>/<UTC stamp>-<name>.json`` (never overwriting)."""
    directory = RESULTS_DIR if directory is None else directory
    directory.mkdir(parents=True, exist_ok=True)
    _, stamp = now_stamp()
    path = directory / f"{stamp}-{name}.json"
    n = 1
    while path.exists():
        n += 1
        path = directory / f"{stamp}-{name}-{n}.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    return path
