"""HTTP/1.1 layer: h11-parsed connections, routing, response and SSE framing."""
