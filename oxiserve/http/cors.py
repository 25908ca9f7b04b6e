"""CORS, so a web page can call the API with fetch() (off unless origins are configured).

Preflight ``OPTIONS`` requests are answered here (204 with the route's methods);
every other response to an allowed origin gets ``access-control-allow-origin``.
No cookies are involved (API keys travel in headers), so credentials are never allowed.
"""

from __future__ import annotations

import re

from oxiserve.http.messages import Headers, Request, Response

_TOKEN_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")
_EXPOSED = "x-request-id, retry-after"


class CorsPolicy:
    """Which origins may call the API from a browser (``*`` for any)."""

    def __init__(self, origins: str) -> None:
        names = {o.strip().rstrip("/") for o in origins.split(",") if o.strip()}
        self.any = "*" in names
        self.origins = frozenset(names - {"*"})

    def allow_origin(self, request: Request) -> str | None:
        origin = request.headers.get("origin")
        if origin is None:
            return None
        if self.any:
            return "*"
        return origin if origin in self.origins else None

    def headers(self, request: Request) -> Headers:
        """Headers to add to every response (preflights included)."""
        allowed = self.allow_origin(request)
        # With a list of origins the answer depends on Origin: caches must know that.
        vary = () if self.any else (("vary", "origin"),)
        if allowed is None:
            return vary
        return (("access-control-allow-origin", allowed),
                ("access-control-expose-headers", _EXPOSED), *vary)  # fmt: skip

    def preflight(self, request: Request, methods: tuple[str, ...]) -> Response | None:
        """The answer to a preflight for a route allowing ``methods``, or None if not one.

        Only the preflight's own headers are here; ``headers()`` is added to it like to any
        other response.
        """
        if request.method != "OPTIONS" or "access-control-request-method" not in request.headers:
            return None
        headers: list[tuple[str, str]] = []
        if self.allow_origin(request) is not None:
            headers.append(("access-control-allow-methods", ", ".join(methods)))
            asked = request.headers.get("access-control-request-headers", "")
            if asked and _TOKEN_LIST.fullmatch(asked.strip()):
                headers.append(("access-control-allow-headers", asked.strip()))
            headers.append(("access-control-max-age", "600"))
        return Response(b"", 204, "text/plain", tuple(headers))
