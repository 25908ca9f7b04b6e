"""Rendering a comparison: the figures table (terminal and Markdown) and the goal checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.compare import GOALS, METRICS, Metric, ServerResult, Sizes, client_bound
from bench.report import aligned, fmt_auto, markdown_table

OXISERVE_KEY = "oxiserve"
Runs = Sequence[Sequence[ServerResult]]  # one comparison (all servers on one loop) each


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def _label(metric: Metric, sizes: Sizes) -> str:
    return metric.label.format(
        long=f"{sizes.long_stream_tokens:,}", streams=sizes.streams, conns=sizes.idle_connections,
        runs=sizes.runs,
    )  # fmt: skip


def _cell(result: ServerResult, metric: Metric, base: ServerResult | None) -> str:
    value = result.figures.get(metric.key)
    if result.failure is not None and value is None:
        return "failed"
    text = fmt_auto(value)
    summary = result.summaries.get(metric.source)
    if summary is not None and client_bound(summary) and value is not None:
        text += "*"
    if base is not None and base is not result:
        r = ratio(base.figures.get(metric.key), value)
        if r is not None:
            text += f" ({r:.2f}x)"
    return text


def figure_rows(results: Sequence[ServerResult], sizes: Sizes) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per metric, one column per server (peers with ratio
    oxiserve / peer in parentheses); the top-left cell names the servers' loop."""
    base = next((r for r in results if r.spec.key == OXISERVE_KEY), None)
    loop = loop_of(results)
    header = [f"{loop} loop" if loop else "", *(r.spec.label for r in results)]
    rows = []
    for metric in METRICS:
        if all(r.figures.get(metric.key) is None for r in results):
            continue
        better = "higher" if metric.higher_is_better else "lower"
        label = f"{_label(metric, sizes)} ({better} is better)"
        rows.append([label, *(_cell(r, metric, base) for r in results)])
    return header, rows


def goal_lines(results: Sequence[ServerResult], sizes: Sizes) -> list[str]:
    by_key = {r.spec.key: r for r in results}
    base = by_key.get(OXISERVE_KEY)
    metrics = {m.key: m for m in METRICS}
    lines = []
    for goal in GOALS:
        peer = by_key.get(goal.peer)
        if base is None or peer is None:
            continue
        metric = metrics[goal.metric]
        r = ratio(base.figures.get(goal.metric), peer.figures.get(goal.metric))
        op = ">=" if metric.higher_is_better else "<="
        if r is None:
            continue  # not measured in this run
        met = r >= goal.ratio if metric.higher_is_better else r <= goal.ratio
        lines.append(
            f"{'PASS' if met else 'FAIL'}  {_label(metric, sizes)}: oxiserve / {peer.spec.label}"
            f" = {r:.2f}x (goal {op} {goal.ratio:g}x)"
        )
    return lines


def loop_of(results: Sequence[ServerResult]) -> str | None:
    """The event loop every server of one comparison ran on (None: each on its default)."""
    loops = {r.loop for r in results}
    return loops.pop() if len(loops) == 1 else None


def heading(results: Sequence[ServerResult]) -> str:
    loop = loop_of(results)
    if loop is None:
        return "Each server on its default event loop"
    return f"Every server on the {loop} event loop (started with --loop {loop})"


def table_notes(results: Sequence[ServerResult]) -> list[str]:
    """What one table needs said under it: client-bound figures, failures."""
    lines = []
    if any(client_bound(s) for r in results for s in r.summaries.values()):
        lines.append(
            "* client-bound: the load generator's core was saturated while the server's was not;"
            " the figure is a lower bound for that server."
        )
    return lines + [f"{r.spec.label}: {r.failure}" for r in results if r.failure]


def notes(runs: Runs, sizes: Sizes, context: dict[str, Any]) -> list[str]:
    """What every table of a run shares: sizes, pinning, loops, token source."""
    results = [r for run in runs for r in run]
    source = "peers in --burst mode" if context.get("burst") else "one loop iteration per token"
    pinning = f"Ratios are oxiserve / peer. Pinning: {context['pinning']}."
    if not any(r.summaries for r in results):
        lines = [pinning]
    else:
        lines = [
            f"Each load measurement runs {sizes.duration:g} s after a {sizes.warmup:g} s warm-up;"
            f" streams carry {sizes.stream_tokens} tokens at {sizes.streams} streams, non-stream"
            f" requests run on {sizes.json_concurrency} keep-alive connections (16 tokens per"
            " chat).",
            f"{pinning} Client loop: {context['client_loop']}. Zero-latency token source"
            f" ({source}).",
        ]
    loops = [loop for run in runs if (loop := loop_of(run)) is not None]
    if loops:
        lines.append(
            f"One comparison per server loop ({', '.join(loops)}), every server of a table on"
            " that table's loop."
        )
    if any(r.footprint for r in results) and len(loops) > 1:
        lines.append(
            "Footprint figures are measured on each loop too (import time is the module's"
            " import alone, which the loop does not change)."
        )
    return lines


def _terminal_table(results: Sequence[ServerResult], sizes: Sizes) -> list[str]:
    header, rows = figure_rows(results, sizes)
    parts = aligned([header, *rows])
    rule = "-" * max(len(p) for p in parts)
    goals = goal_lines(results, sizes)
    text = [f"{heading(results)}:", "", parts[0], rule, *parts[1:], ""]
    if goals:
        text += ["goals:", *(f"  {g}" for g in goals), ""]
    notes_ = table_notes(results)
    return text + ([*notes_, ""] if notes_ else [])


def render_terminal(runs: Runs, sizes: Sizes, context: dict[str, Any]) -> str:
    """One table (with its goal checks) per comparison, then the shared notes."""
    text = [line for run in runs for line in _terminal_table(run, sizes)]
    return "\n".join([*text, *notes(runs, sizes, context)])


def render_markdown(runs: Runs, sizes: Sizes, context: dict[str, Any]) -> str:
    """The README block: a heading and a table per comparison, then where it was measured."""
    parts = []
    for run in runs:
        header, rows = figure_rows(run, sizes)
        parts += [f"**{heading(run)}**", "", markdown_table(rows, header), ""]
        notes_ = table_notes(run)
        parts += [*notes_, ""] if notes_ else []
    machine = context.get("machine", {})
    cpus = f"{machine.get('cpu_count')} CPUs ({machine.get('cpu_model')})"
    where = f"{cpus}, Python {machine.get('python')}"
    footer = [f"Measured on {where}, commit {context.get('git_commit') or 'unknown'}."]
    return "\n".join([*parts, *footer, *notes(runs, sizes, context)])
