"""oxiserve: a small, fast and dependable OpenAI-compatible inference server."""
