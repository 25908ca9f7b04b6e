"""OpenAI-compatible endpoints: each module registers its routes on a Router."""

from __future__ import annotations

from oxiserve.api import assistants, chat, completions, embeddings, models, responses
from oxiserve.api.routes import bind
from oxiserve.api.state import AppState
from oxiserve.http.router import Router


def build_router(state: AppState) -> Router:
    router = Router()
    for module in (models, chat, completions, embeddings, assistants, responses):
        bind(router, state, module.ROUTES)
    if state.bus is not None:  # other replicas' calls for the jobs this one runs
        assistants.runs.serve_owner_calls(state, state.bus)
        responses.responses.serve_owner_calls(state, state.bus)
    return router
