"""Reference servers the benchmark compares oxiserve with (run each with ``python -m``)."""
