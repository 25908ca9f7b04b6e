"""What every endpoint handler shares: the config and the engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from oxiserve.config import Config
from oxiserve.engine.base import Engine, ModelInfo
from oxiserve.errors import ModelNotFound


@dataclass(slots=True)
class AppState:
    config: Config
    engine: Engine
    started_at: float = field(default_factory=time.time)

    def model(self, model_id: str) -> ModelInfo:
        for info in self.engine.models():
            if info.id == model_id:
                return info
        raise ModelNotFound(model_id)
