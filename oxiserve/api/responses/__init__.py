"""The Responses API (responses, background mode, resumable streams) and Conversations."""

from __future__ import annotations

from oxiserve.api.responses import conversations, responses

ROUTES = [*responses.ROUTES, *conversations.ROUTES]
