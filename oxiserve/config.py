"""The one place settings are declared: a frozen Config dataclass.

CLI flags (``--sim-ttft-ms``) and environment variables (``OXISERVE_SIM_TTFT_MS``)
are derived from the fields below; their help text is the field's ``help``
metadata.  Add a setting here and it appears everywhere.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

EngineName = Literal["sim", "oxillama"]
SimMode = Literal["echo", "lorem", "fixed"]
SimLatencyDist = Literal["uniform", "normal", "lognormal"]
SIM_FAILURE_TYPES = (
    "rate_limit", "invalid_api_key", "context_length", "server_error", "overloaded",
    "model_not_found", "mid_stream", "abort", "stall",
)  # fmt: skip
LogLevel = Literal["debug", "info", "warning", "error"]
LoopName = Literal["auto", "asyncio", "uvloop"]
AccessLogFormat = Literal["text", "json"]


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True, slots=True)
class Config:
    """All oxiserve settings, with their defaults."""

    # Server
    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(8000, "port to listen on (0 picks a free port)")
    ssl_certfile: str = _opt("", "TLS certificate chain (PEM): serve HTTPS")
    ssl_keyfile: str = _opt("", "TLS private key (PEM), with --ssl-certfile")
    uds: str = _opt("", "serve on this Unix domain socket path instead of host:port")
    workers: int = _opt(
        1, "worker processes sharing the port (SO_REUSEPORT), each restarted when it dies"
    )
    worker_header: bool = _opt(
        False, "say which worker answered, in an x-oxiserve-worker header (index/pid; debug)"
    )
    engine: EngineName = _opt(
        "sim",
        "inference engine (oxillama: a GGUF model, the [oxillama] extra)",
        choices=("sim", "oxillama"),
    )
    model_name: str = _opt(
        "oxiserve-sim", "model id served (oxillama: the model file's stem unless given)"
    )
    served_model_name: tuple[str, ...] = _opt(
        (), "model ids served, all listed in /v1/models (instead of --model-name)"
    )
    accept_any_model: bool = _opt(
        False, "serve any model name a request asks for, as the first served model"
    )
    log_level: LogLevel = _opt(
        "info", "logging level", choices=("debug", "info", "warning", "error")
    )
    access_log: bool = _opt(True, "log one line per request at INFO")
    access_log_format: AccessLogFormat = _opt(
        "text", "access log lines as text or as one JSON object each", choices=("text", "json")
    )
    root_path: str = _opt(
        "", "a path prefix the server is served under (e.g. /llm): requests may carry it"
    )
    loop: LoopName = _opt(
        "auto",
        "event loop of python -m oxiserve (auto: uvloop when installed, see the [fast] extra)",
        choices=("auto", "asyncio", "uvloop"),
    )
    shutdown_timeout: float = _opt(
        10.0, "seconds in-flight requests and running jobs get to finish on shutdown"
    )
    job_retention: float = _opt(
        300.0, "seconds a finished detached job (a run, a background response) stays re-attachable"
    )

    # Store and runs
    db: str = _opt(
        "oxiserve.db",
        "where assistants, threads, messages, runs and responses are kept: an SQLite file "
        "(:memory: keeps nothing) or a postgresql://USER@HOST/DB URL (the [postgres] extra)",
    )
    bus: str = _opt(
        "",
        "share runs, background responses and their live events between processes and "
        "replicas: a redis://HOST:PORT/N URL (the [redis] extra; needs a shared --db)",
    )
    bus_flush_ms: float = _opt(
        0.0,
        "with --bus: the least time between two flushes of live events to Redis (0: the next "
        "as soon as the last returns); more batches more tokens per command, at the cost of "
        "that delay for readers on other replicas",
    )
    lease_timeout: float = _opt(
        15.0,
        "with --bus: seconds after which a job whose replica stopped renewing its lease is "
        "failed by another replica",
    )
    response_retention: float = _opt(
        600.0,
        "seconds a background response's events stay in memory for resumed streams "
        "(after that a resumed stream is replayed from the store)",
    )
    retained_jobs: int = _opt(
        32,
        "ended background jobs whose events stay in memory at most (older ones are "
        "replayed from the store)",
    )
    run_timeout: float = _opt(
        600.0, "seconds a run may take, waiting for tool outputs included, before it expires"
    )

    # Who may call it
    api_key: tuple[str, ...] = _opt(
        (),
        "a key clients must send as 'Authorization: Bearer KEY' (repeatable; env: comma-"
        "separated); with any key set, every /v1 request needs one",
    )
    api_keys_file: str = _opt("", "a file of keys, one a line (# comments); reloaded on SIGHUP")

    metrics_public: bool = _opt(False, "GET /metrics needs no API key even when keys are set")
    rate_limit_rps: float = _opt(
        0.0, "requests per second each key (or client address, without keys) may make (0: no limit)"
    )
    rate_limit_burst: int = _opt(0, "requests a key may make at once above its rate (0: the rate)")
    rate_limit_tpm: int = _opt(
        0, "tokens per minute each key may ask for, prompt + max tokens (0: no limit)"
    )
    max_concurrent_streams: int = _opt(0, "streams each key may have open at once (0: no limit)")

    cors_allow_origins: str = _opt(
        "", "origins a web page may call the API from: comma-separated, or * (empty: no CORS)"
    )

    # HTTP limits
    max_header_bytes: int = _opt(16 * 1024, "max bytes of a request's header block (431)")
    max_header_count: int = _opt(100, "max number of request header fields (431)")
    max_body_bytes: int = _opt(10 * 1024 * 1024, "max request body bytes (413)")
    header_timeout: float = _opt(10.0, "seconds to receive a request's headers")
    body_timeout: float = _opt(30.0, "seconds to receive a request's body")
    keepalive_timeout: float = _opt(15.0, "seconds an idle keep-alive connection is kept")
    write_timeout: float = _opt(60.0, "seconds a client may leave our writes unread (then dropped)")
    max_connections: int = _opt(1024, "max concurrent connections (more get 503)")
    write_buffer_limit: int = _opt(
        256 * 1024, "bytes buffered for a slow reader before the server stops writing"
    )
    max_buffered_bytes: int = _opt(
        64 * 1024 * 1024,
        "bytes of large bodies buffered for all clients together; more waits (0: no bound)",
    )

    max_tokens_limit: int = _opt(131072, "largest max_tokens a request may ask for (400 beyond)")

    # Streaming
    sse_keepalive: float = _opt(
        15.0,
        "seconds of stream silence before a ': ping' comment; also how long the response "
        "head waits for the first token (0: no pings, the head waits for the first token)",
    )
    stream_buffer: int = _opt(256, "frames a stream keeps for slow or late readers")
    stream_coalesce_ms: float = _opt(
        2.0,
        "while a stream is busy, frames are gathered into one write per this many ms "
        "(the first frames and any frame after a quiet spell go out at once; 0: never gather)",
    )

    # Real engine (--engine oxillama)
    model: str = _opt("", "GGUF model file the oxillama engine serves")
    embedding_model: str = _opt("", "a second GGUF model for /v1/embeddings (default: --model)")
    tokenizer: str = _opt("", "tokenizer file, when the GGUF has none of its own")
    chat_template: str = _opt(
        "", "chat template: chatml, llama3, alpaca or a .jinja file (default: the model's own)"
    )
    context_size: int = _opt(0, "context window in tokens (0: the model's own)")
    threads: int = _opt(4, "threads each engine computes with")
    engine_workers: int = _opt(1, "engines loaded, each generating one request at a time")
    max_queue: int = _opt(64, "generations waiting for an engine at most (more get 503)")

    # Simulator engine
    sim_mode: SimMode = _opt("lorem", "simulated output", choices=("echo", "lorem", "fixed"))
    sim_fixed_text: str = _opt("Hello! This is a simulated answer.", "text of --sim-mode fixed")
    sim_output_len: int = _opt(0, "cap on simulated output tokens (0: no cap)")
    sim_default_max_tokens: int = _opt(16, "tokens produced when a request sets no max_tokens")
    sim_ttft_ms: float = _opt(0.0, "simulated time to first token (ms)")
    sim_ttft_jitter_ms: float = _opt(0.0, "uniform jitter added to the time to first token (ms)")
    sim_itl_ms: float = _opt(0.0, "simulated inter-token latency (ms)")
    sim_itl_jitter_ms: float = _opt(0.0, "uniform jitter added to the inter-token latency (ms)")
    sim_failure_rate: float = _opt(0.0, "fraction of requests that fail (0..1)")
    sim_failure_types: tuple[str, ...] = _opt(
        ("server_error",),
        "how simulated failures happen, one picked per failing request: "
        + ", ".join(SIM_FAILURE_TYPES),
    )
    sim_stall_ms: float = _opt(10_000.0, "how long a 'stall' failure sends nothing (ms)")
    sim_seed: int = _opt(0, "seed of the simulator (same seed + same request = same output)")
    sim_max_running: int = _opt(
        0, "sequences the simulator generates at once; more wait in a queue (0: no limit)"
    )
    sim_max_waiting: int = _opt(
        1000, "requests waiting for a running slot at most; more are refused (queue full)"
    )
    sim_queue_full_status: int = _opt(
        429, "status of a request refused because the queue is full, with Retry-After: 429 or 503"
    )
    sim_prefill_ms_per_token: float = _opt(
        0.0, "time to first token grows by this per prompt token (ms), as prefill does"
    )
    sim_prefill_overhead_ms: float = _opt(0.0, "fixed prefill time added to the first token (ms)")
    sim_time_factor_under_load: float = _opt(
        1.0,
        "first-token and inter-token times stretch linearly with running sequences, "
        "up to this factor at --sim-max-running",
    )
    sim_max_model_len: int = _opt(
        0,
        "context window: prompt + max_tokens beyond it is 400 context_length_exceeded "
        "(0: no limit)",
    )
    sim_latency_dist: SimLatencyDist = _opt(
        "uniform",
        "how jitter spreads latencies: uniform adds 0..jitter, normal and lognormal "
        "have the jitter as standard deviation (never below 0)",
        choices=("uniform", "normal", "lognormal"),
    )
    sim_embedding_dim: int = _opt(384, "length of simulated embedding vectors")
    sim_startup_delay: float = _opt(
        0.0, "seconds /health/ready answers 503 after the start, as a loading server would"
    )

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append("port must be in 0..65535")
        if not 0.0 <= self.sim_failure_rate <= 1.0:
            problems.append("sim_failure_rate must be in 0..1")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                problems.append(f"{f.name} must not be negative")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                problems.append(f"{f.name} must be one of {', '.join(choices)}")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            problems.append("root_path must start with / and not end with one (e.g. /llm)")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            problems.append("ssl_certfile and ssl_keyfile go together")
        unknown = [k for k in self.sim_failure_types if k not in SIM_FAILURE_TYPES]
        if unknown or not self.sim_failure_types:
            problems.append(f"sim_failure_types must be some of {', '.join(SIM_FAILURE_TYPES)}")
        if self.sim_queue_full_status not in (429, 503):
            problems.append("sim_queue_full_status must be 429 or 503")
        if self.sim_time_factor_under_load < 1.0:
            problems.append("sim_time_factor_under_load must be at least 1")
        if self.workers < 1:
            problems.append("workers must be at least 1")
        if self.workers > 1 and self.uds:
            problems.append("workers > 1 needs a TCP port, not --uds")
        if self.engine_workers < 1:
            problems.append("engine_workers must be at least 1")
        if self.max_queue < 0:
            problems.append("max_queue must be 0 or more")
        if self.threads < 1:
            problems.append("threads must be at least 1")
        if self.retained_jobs < 0:
            problems.append("retained_jobs must be 0 or more")
        if self.run_timeout <= 0:
            problems.append("run_timeout must be positive")
        if self.stream_buffer < 2:
            problems.append("stream_buffer must be at least 2")
        if self.bus and not self.bus.startswith(("redis://", "rediss://", "unix://")):
            problems.append("bus must be a redis://HOST:PORT/N URL")
        if not 0 <= self.bus_flush_ms <= 1000:
            problems.append("bus_flush_ms must be in 0..1000")
        if self.lease_timeout <= 0:
            problems.append("lease_timeout must be positive")
        if 0 < self.max_buffered_bytes < 64 * 1024:
            problems.append("max_buffered_bytes must be 0 (no bound) or at least 65536 (a piece)")
        if problems:
            raise ValueError("; ".join(problems))

    def served_names(self, default: str) -> tuple[str, ...]:
        """The model ids served: ``--served-model-name``'s, else ``--model-name`` (``default``
        when that is the simulator's default name: the oxillama engine's file stem)."""
        if self.served_model_name:
            return self.served_model_name
        return (default if self.model_name == "oxiserve-sim" else self.model_name,)

    @classmethod
    def from_env(
        cls,
        environ: dict[str, str] | None = None,
        *,
        defaults: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> Config:
        """Build a Config from ``defaults`` (a config file's), then ``OXISERVE_*`` variables,
        then explicit overrides (the command line's)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = dict(defaults or {})
        for f in dataclasses.fields(cls):
            raw = env.get(env_name(f.name))
            if raw is not None:
                values[f.name] = parse_value(f, raw)
        values.update(overrides)
        for name, value in values.items():
            if isinstance(value, list):  # a repeated command-line option
                values[name] = tuple(value)
        return cls(**values)


def env_name(field_name: str) -> str:
    return "OXISERVE_" + field_name.upper()


def field_type(f: dataclasses.Field[Any]) -> type:
    """The Python type a field's text form converts to (from its default)."""
    return type(f.default)


def parse_value(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = field_type(f)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{env_name(f.name)}: expected a boolean, got {raw!r}")
    if kind is tuple:  # a repeatable option: comma-separated in the environment
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{f.name}: expected {kind.__name__}, got {raw!r}") from None
