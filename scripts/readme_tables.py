"""Regenerates the README's option and endpoint tables from the code (``make readme``).

The tables sit between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers;
``tests/test_readme.py`` fails when they drift from Config and the router.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from oxiserve.api import build_router
from oxiserve.api.state import AppState
from oxiserve.config import Config, env_name
from oxiserve.engine.sim import SimEngine

README = Path(__file__).resolve().parent.parent / "README.md"

ENDPOINT_NOTES = {
    "/health": 'liveness: `{"status": "ok"}`',
    "/health/ready": "readiness: 503 while a real model loads (`loading`), for "
    "`--sim-startup-delay` seconds (`starting`) and while shutting down, else 200 `ready`",
    "/v1/models": "models in OpenAI's list shape",
    "/v1/models/{model}": "one model; 404 `model_not_found` if unknown",
    "/v1/chat/completions": "chat completions; `stream`, `stream_options.include_usage`, `n`, "
    "`stop`, `tools`/`tool_choice` (and legacy `functions`/`function_call`), `logprobs`, "
    "`response_format` (`json_schema`, `strict`, `json_object`), `seed`",
    "/v1/completions": "legacy text completions; `stream`, `echo`, `logprobs`, prompt lists",
    "/v1/embeddings": "strings or token-id arrays; `encoding_format` float/base64, `dimensions`",
    "POST /v1/assistants": "create an assistant (model, name, description, instructions, tools, "
    "metadata, temperature, top_p, response_format)",
    "GET /v1/assistants": "list assistants: `limit` 1-100, `order`, `after`, `before`",
    "GET /v1/assistants/{id}": "one assistant",
    "POST /v1/assistants/{id}": "modify an assistant (the fields given)",
    "DELETE /v1/assistants/{id}": "delete an assistant",
    "POST /v1/threads": "create a thread, with initial `messages` and `metadata`",
    "POST /v1/threads/runs": "create a thread and run it; `stream` true for events",
    "GET /v1/threads/{thread_id}": "one thread",
    "POST /v1/threads/{thread_id}": "modify a thread's metadata",
    "DELETE /v1/threads/{thread_id}": "delete a thread with its messages, runs and steps",
    "POST /v1/threads/{thread_id}/messages": "add a message (string or content parts)",
    "GET /v1/threads/{thread_id}/messages": "list messages: paging as above, `run_id` filter",
    "GET /v1/threads/{thread_id}/messages/{message_id}": "one message",
    "POST /v1/threads/{thread_id}/messages/{message_id}": "modify a message's metadata",
    "DELETE /v1/threads/{thread_id}/messages/{message_id}": "delete a message",
    "POST /v1/threads/{thread_id}/runs": "run the thread; `stream` true for token-by-token "
    "events; one active run per thread",
    "GET /v1/threads/{thread_id}/runs": "list runs",
    "GET /v1/threads/{thread_id}/runs/{run_id}": "one run (`openai-poll-after-ms` while active)",
    "POST /v1/threads/{thread_id}/runs/{run_id}": "modify a run's metadata",
    "POST /v1/threads/{thread_id}/runs/{run_id}/cancel": "cancel: `cancelling`, then "
    "`cancelled` within milliseconds; the partial message is kept `incomplete`",
    "POST /v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs": "all outputs of a "
    "`requires_action` run at once; `stream` true for the rest of the run",
    "GET /v1/threads/{thread_id}/runs/{run_id}/stream": "**extension**: re-attach to a run's "
    "events (snapshot, then live; a finished run's events from the store)",
    "GET /v1/threads/{thread_id}/runs/{run_id}/steps": "list a run's steps",
    "GET /v1/threads/{thread_id}/runs/{run_id}/steps/{step_id}": "one run step",
    "POST /v1/responses": "create a response: `input` (text or items), `instructions`, "
    "`previous_response_id`, `conversation`, `store`, `background`, `stream`, function `tools`, "
    "`tool_choice`, `text.format`, `max_output_tokens`",
    "GET /v1/responses/{id}": "one response; `stream=true` replays its events, "
    "`starting_after=N` resumes after event N",
    "DELETE /v1/responses/{id}": "delete a response",
    "POST /v1/responses/{id}/cancel": "cancel a background response (idempotent)",
    "GET /v1/responses/{id}/input_items": "a response's input items: `limit`, `order`, `after`",
    "POST /v1/conversations": "create a conversation (`metadata`, up to 20 `items`)",
    "GET /v1/conversations/{conversation_id}": "one conversation",
    "POST /v1/conversations/{conversation_id}": "modify a conversation's metadata",
    "DELETE /v1/conversations/{conversation_id}": "delete a conversation and its items",
    "POST /v1/conversations/{conversation_id}/items": "add up to 20 items",
    "GET /v1/conversations/{conversation_id}/items": "list items: `limit`, `order`, `after`",
    "GET /v1/conversations/{conversation_id}/items/{item_id}": "one item",
    "DELETE /v1/conversations/{conversation_id}/items/{item_id}": "delete an item",
}


def options_table() -> str:
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            flag = f"{flag} / --no-{f.name.replace('_', '-')}"
        meaning = str(f.metadata["help"])
        if f.metadata.get("choices"):
            meaning += ": " + ", ".join(f"`{c}`" for c in f.metadata["choices"])
        rows.append(f"| `{flag}` | `{env_name(f.name)}` | `{default!r}` | {meaning} |")
    return "\n".join(rows)


def endpoints_table() -> str:
    config = Config()
    router = build_router(AppState(config, SimEngine(config)))
    rows = ["| method | path | what |", "|---|---|---|"]
    for method, path in router.routes():
        note = ENDPOINT_NOTES.get(f"{method} {path}", ENDPOINT_NOTES.get(path, ""))
        rows.append(f"| {method} | `{path}` | {note} |")
    return "\n".join(rows)


TABLES = {"options": options_table, "endpoints": endpoints_table}


def render(text: str) -> str:
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n)(?:.*?\n)?(<!-- {name}:end -->)", re.S)
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main() -> int:
    text = README.read_text()
    updated = render(text)
    if "--check" in sys.argv:
        return 0 if updated == text else 1
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
