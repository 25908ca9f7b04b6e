"""Prometheus metrics of one Server, with vLLM's names where vLLM has the same measure.

Dashboards, the llm-d inference scheduler and gateways that scrape vLLM read these unchanged:
``vllm:num_requests_running``, ``vllm:time_to_first_token_seconds``, ... with a ``model_name``
label.  The rest are ``oxiserve_*``.  One registry per Server (two servers in one process keep
their own counts).

Recording is cheap by construction: a generation is recorded once, when it ends (its
inter-token latency as the mean gap weighted by its gaps, so no per-token observation);
a request once, when its handler returns.  The figures are plain dicts and lists, turned into
Prometheus families only when ``/metrics`` is scraped.

    metrics = Metrics(gauges={"vllm:num_requests_running": lambda: engine.running})
    metrics.generation("m", prompt=12, generated=40, ttft=0.05, e2e=0.9, finish="stop")
    metrics.request("/v1/chat/completions", "POST", 200, 0.9)
    body = metrics.render()
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

# prometheus_client is imported when /metrics is first scraped: it costs ~70 ms of start-up.

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# vLLM's buckets (vllm/engine/metrics.py) so its dashboards' quantiles read the same.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
                 100000)  # fmt: skip
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)  # fmt: skip


class Histogram:
    """Bucket counts and a sum; ``observe(value, times)`` counts a value ``times`` at once."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.total += value * times

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (upper bound, count) pairs, as the exposition format has them."""
        running, out = 0.0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class Metrics:
    """The figures of one server (see the module docstring)."""

    def __init__(
        self,
        gauges: Mapping[str, Callable[[], float]] | None = None,
        runs: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self._gauges = dict(gauges or {})
        self._runs = runs  # active runs by status, read at scrape time
        self._models: set[str] = set()
        self._hists: dict[tuple[str, str], Histogram] = {}
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._requests: dict[tuple[str, str, str], int] = {}
        self._durations: dict[str, Histogram] = {}
        self._registry: Any = None  # made at the first scrape

    # --- recording ---------------------------------------------------------------------------

    def _hist(self, name: str, model: str, bounds: Sequence[float]) -> Histogram:
        key = (name, model)
        hist = self._hists.get(key)
        if hist is None:
            hist = self._hists[key] = Histogram(bounds)
        return hist

    def count(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self._counters[key] = self._counters.get(key, 0.0) + value

    def generation(
        self,
        model: str,
        *,
        prompt: int,
        generated: int,
        ttft: float,
        e2e: float,
        finish: str,
        queue: float = 0.0,
    ) -> None:
        """One ended generation: its token counts, first-token and end-to-end times (from
        the moment it was asked for) and why it ended."""
        self._models.add(model)
        self._hist("vllm:time_to_first_token_seconds", model, TTFT_BUCKETS).observe(ttft)
        self._hist("vllm:e2e_request_latency_seconds", model, E2E_BUCKETS).observe(e2e)
        self._hist("vllm:request_queue_time_seconds", model, TTFT_BUCKETS).observe(queue)
        self._hist("vllm:request_prompt_tokens", model, TOKEN_BUCKETS).observe(prompt)
        self._hist("vllm:request_generation_tokens", model, TOKEN_BUCKETS).observe(generated)
        if generated > 1:
            gap = max(0.0, e2e - ttft) / (generated - 1)
            for name in ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"):
                self._hist(name, model, ITL_BUCKETS).observe(gap, generated - 1)
        self.count("vllm:prompt_tokens", prompt, model_name=model)
        self.count("vllm:generation_tokens", generated, model_name=model)
        self.count("vllm:request_success", 1, model_name=model, finished_reason=finish)

    def lagged(self, missed: int) -> None:
        """A stream reader was overrun by its ring (and caught up exactly): ``Topic.on_lag``."""
        self.count("oxiserve_broadcast_lagged")

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, str(status))
        self._requests[key] = self._requests.get(key, 0) + 1
        hist = self._durations.get(route)
        if hist is None:
            hist = self._durations[route] = Histogram(REQUEST_BUCKETS)
        hist.observe(seconds)

    # --- exposition ----------------------------------------------------------------------------

    def render(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self)
        body: bytes = generate_latest(self._registry)
        return body

    def collect(self) -> Iterable[Any]:
        """The families, built at scrape time (prometheus_client's collector protocol)."""
        yield from self._gauge_families()
        yield from self._histogram_families()
        yield from self._counter_families()
        yield from self._request_families()

    def _gauge_families(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        models = sorted(self._models) or [""]
        for name, read in sorted(self._gauges.items()):
            if name.startswith("vllm:"):
                family = GaugeMetricFamily(name, _HELP.get(name, name), labels=["model_name"])
                value = float(read())
                for model in models:
                    family.add_metric([model], value)
            else:
                family = GaugeMetricFamily(name, _HELP.get(name, name), value=float(read()))
            yield family
        if self._runs is not None:
            runs = GaugeMetricFamily("oxiserve_runs", "Assistants runs in memory, by status",
                                     labels=["status"])  # fmt: skip
            counts = self._runs()
            for status in _ACTIVE_RUN_STATUSES:
                runs.add_metric([status], float(counts.get(status, 0)))
            yield runs

    def _histogram_families(self) -> Iterable[Any]:
        from prometheus_client.core import HistogramMetricFamily

        names = sorted({name for name, _ in self._hists} | set(_HISTOGRAMS))
        for name in names:
            family = HistogramMetricFamily(name, _HELP.get(name, name), labels=["model_name"])
            for (hist_name, model), hist in sorted(self._hists.items()):
                if hist_name == name:
                    family.add_metric([model], hist.buckets(), hist.total)
            yield family

    def _counter_families(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily

        for name in _COUNTERS:
            labels = ["model_name", "finished_reason"] if name == "vllm:request_success" else (
                ["model_name"] if name.startswith("vllm:") else []
            )  # fmt: skip
            family = CounterMetricFamily(name, _HELP.get(name, name), labels=labels)
            for (counter, label_items), value in sorted(self._counters.items()):
                if counter == name:
                    values = dict(label_items)
                    family.add_metric([values.get(label, "") for label in labels], value)
            if not labels and not any(c == name for c, _ in self._counters):
                family.add_metric([], 0.0)
            yield family

    def _request_families(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        total = CounterMetricFamily("oxiserve_requests", "HTTP requests by route pattern",
                                    labels=["route", "method", "status"])  # fmt: skip
        for (route, method, status), count in sorted(self._requests.items()):
            total.add_metric([route, method, status], count)
        yield total
        durations = HistogramMetricFamily(
            "oxiserve_request_duration_seconds", "Time to a request's answer (a stream's head)",
            labels=["route"],
        )  # fmt: skip
        for route, hist in sorted(self._durations.items()):
            durations.add_metric([route], hist.buckets(), hist.total)
        yield durations


_ACTIVE_RUN_STATUSES = ("queued", "in_progress", "requires_action", "cancelling")
_HISTOGRAMS = (
    "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
    "vllm:time_per_output_token_seconds", "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds", "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
)  # fmt: skip
_COUNTERS = (
    "vllm:prompt_tokens", "vllm:generation_tokens", "vllm:request_success",
    "oxiserve_rate_limited", "oxiserve_broadcast_lagged",
)  # fmt: skip
_HELP = {
    "vllm:num_requests_running": "Number of requests generating now",
    "vllm:num_requests_waiting": "Number of requests waiting for an engine",
    "vllm:kv_cache_usage_perc": "KV-cache usage (1 = 100%); 0 for the simulator",
    "vllm:time_to_first_token_seconds": "Time to the first token (non-stream: to the answer)",
    "vllm:inter_token_latency_seconds": "Time between tokens",
    "vllm:time_per_output_token_seconds": "Time per output token (as inter-token latency)",
    "vllm:e2e_request_latency_seconds": "Time from request to its last token",
    "vllm:request_queue_time_seconds": "Time waiting for an engine",
    "vllm:request_prompt_tokens": "Prompt tokens per request",
    "vllm:request_generation_tokens": "Generated tokens per request",
    "vllm:prompt_tokens": "Prompt tokens processed",
    "vllm:generation_tokens": "Tokens generated",
    "vllm:request_success": "Generations ended, by finish reason",
    "oxiserve_rate_limited": "Requests answered 429 by the rate limits",
    "oxiserve_broadcast_lagged": "Stream readers overrun by their ring (caught up exactly)",
    "oxiserve_active_streams": "Generation jobs running",
    "oxiserve_open_connections": "Open client connections",
}
