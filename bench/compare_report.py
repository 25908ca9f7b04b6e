"""Rendering a comparison: the figures table (terminal and Markdown) and the goal checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.compare import GOALS, METRICS, Metric, ServerResult, Sizes, client_bound
from bench.report import aligned, fmt_auto, markdown_table

OXISERVE_KEY = "oxiserve"


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def _label(metric: Metric, sizes: Sizes) -> str:
    return metric.label.format(
        long=f"{sizes.long_stream_tokens:,}", streams=sizes.streams, conns=sizes.idle_connections
    )


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
    oxiserve / peer in parentheses)."""
    base = next((r for r in results if r.spec.key == OXISERVE_KEY), None)
    header = ["", *(r.spec.label for r in results)]
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


def notes(results: Sequence[ServerResult], sizes: Sizes, context: dict[str, Any]) -> list[str]:
    source = "peers in --burst mode" if context.get("burst") else "one loop iteration per token"
    lines = [f"Ratios are oxiserve / peer. Pinning: {context['pinning']}."]
    if any(r.summaries for r in results):
        lines = [
            f"Each load measurement runs {sizes.duration:g} s after a {sizes.warmup:g} s warm-up;"
            f" streams carry {sizes.stream_tokens} tokens at {sizes.streams} streams, non-stream"
            f" requests run on {sizes.json_concurrency} keep-alive connections (16 tokens per"
            " chat).",
            f"{lines[0]} Client loop: {context['client_loop']}. Zero-latency token source"
            f" ({source}).",
        ]
    if any(client_bound(s) for r in results for s in r.summaries.values()):
        lines.append(
            "* client-bound: the load generator's core was saturated while the server's was not;"
            " the figure is a lower bound for that server."
        )
    lines += [f"{r.spec.label}: {r.failure}" for r in results if r.failure]
    return lines


def render_terminal(results: Sequence[ServerResult], sizes: Sizes, context: dict[str, Any]) -> str:
    header, rows = figure_rows(results, sizes)
    parts = aligned([header, *rows])
    rule = "-" * max(len(p) for p in parts)
    goals = goal_lines(results, sizes)
    text = [parts[0], rule, *parts[1:], ""]
    if goals:
        text += ["goals:", *(f"  {g}" for g in goals), ""]
    text += notes(results, sizes, context)
    return "\n".join(text)


def render_markdown(results: Sequence[ServerResult], sizes: Sizes, context: dict[str, Any]) -> str:
    header, rows = figure_rows(results, sizes)
    machine = context.get("machine", {})
    cpus = f"{machine.get('cpu_count')} CPUs ({machine.get('cpu_model')})"
    where = f"{cpus}, Python {machine.get('python')}"
    footer = [f"Measured on {where}, commit {context.get('git_commit') or 'unknown'}."]
    footer += notes(results, sizes, context)
    return "\n".join([markdown_table(rows, header), "", *footer])
