"""What every endpoint handler shares: the config, the engine, the job supervisor, the store
and the runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from oxiserve.api.keys import KeyRing
from oxiserve.api.limits import Limits
from oxiserve.bus import RedisBus
from oxiserve.config import Config
from oxiserve.engine.base import Engine, ModelInfo
from oxiserve.errors import ModelNotFound
from oxiserve.jobs import JobSupervisor
from oxiserve.metrics import Metrics
from oxiserve.runs.manager import Runs
from oxiserve.store.base import Store


@dataclass(slots=True)
class AppState:
    config: Config
    engine: Engine
    jobs: JobSupervisor = field(default_factory=JobSupervisor)
    started_at: float = field(default_factory=time.time)
    store: Store | None = None  # None: the server was not started (handlers never see that)
    runs: Runs | None = None
    keys: KeyRing | None = None  # None or not enabled: /v1 is open
    limits: Limits | None = None  # None or not enabled: no rate limits
    metrics: Metrics | None = None
    bus: RedisBus | None = None  # --bus: state shared with other replicas
    ready_at: float = field(default_factory=time.monotonic)  # /health/ready: 503 before it
    stopping: bool = False  # shutting down: /health/ready is 503 again

    def model(self, model_id: str) -> ModelInfo:
        """The served model a request names; with ``--accept-any-model`` any name is the first
        served model under the name asked for (harnesses send what they were set up with)."""
        models = self.engine.models()
        for info in models:
            if info.id == model_id:
                return info
        if self.config.accept_any_model and model_id and models:
            return replace(models[0], id=model_id)
        raise ModelNotFound(model_id)
