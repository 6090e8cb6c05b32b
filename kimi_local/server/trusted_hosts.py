"""The Host check: a web page must not reach this server under a name of its own (DNS rebinding).

A page on attacker.example can make its own name resolve to 127.0.0.1, and the browser then lets it read the
answers of a server on this machine: to the browser it is still the same origin. What gives it away is the
`Host` header, which carries the attacker's name. So the server answers only to its own names: localhost,
127.0.0.1 and [::1], plus the address it was told to bind when that is not a wildcard. Bound to 0.0.0.0 or
::, the operator has chosen to be reached under any name (a LAN host name, a proxy's), and every Host is
accepted; the API key is then what guards the server. The port is ignored, as Starlette's
`TrustedHostMiddleware` ignores it; unlike that one, a refusal comes in the route's protocol (OpenAI's, or
Anthropic's under /v1/messages), since clients show that message.

The other half of what a web page can do, a cross-site POST without a CORS preflight, is refused by the body
check in `serving_common.read_request` (only `application/json` is read).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from kimi_local.server.errors import ApiError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::")


def allowed_hosts(bind_host: str) -> frozenset[str] | None:
    """The Host names a server bound to `bind_host` answers to; None: any (a wildcard bind)."""
    host = bind_host.strip().strip("[]").lower()
    if host in WILDCARDS:
        return None
    return frozenset((*LOOPBACK_NAMES, host))


def host_name(header: str) -> str | None:
    """`name:port`, `[v6]:port` or a bare name -> the name (lower case, without brackets); None if malformed."""
    try:
        name = urlsplit("//" + header.strip()).hostname
    except ValueError:
        return None
    return name or None


class TrustedHosts:
    def __init__(self, app: ASGIApp, names: frozenset[str] | None, render):
        self.app = app
        self.names = names
        self.render = render  # (Request, ApiError) -> Response, in the route's protocol

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.names is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("host", "")
        if host_name(header) in self.names:
            await self.app(scope, receive, send)
            return
        shown = f"the Host header {header!r}" if header else "a request without a Host header"
        error = ApiError(400, f"{shown} does not name this server (it answers to {', '.join(sorted(self.names))}); "
                              "requests under other names, such as a web page's DNS rebinding, are refused",
                         code="invalid_host")
        await self.render(request, error)(scope, receive, send)
