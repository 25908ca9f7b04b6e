"""oxiserve: a small, fast and dependable OpenAI-compatible inference server.

async with oxiserve.Server(oxiserve.Config(port=0)) as server:
    print(server.url)
"""

from oxiserve.config import Config
from oxiserve.server import Server, serve

__all__ = ["Config", "Server", "serve"]
__version__ = "0.1.0"
