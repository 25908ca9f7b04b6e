"""Inference engines: the protocol every engine speaks, and the built-in simulator."""
