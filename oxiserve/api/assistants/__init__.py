"""The Assistants API (v2): assistants, threads and messages, runs and run steps."""

from __future__ import annotations

from oxiserve.api.assistants import assistants, runs, threads

ROUTES = [*assistants.ROUTES, *threads.ROUTES, *runs.ROUTES]
