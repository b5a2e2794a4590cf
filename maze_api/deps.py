"""Request dependencies: the server context and the caller's identity."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .auth import Identity, TokenTable, is_loopback
from .context import ServerContext

bearer = HTTPBearer(auto_error=False, description="A token from [server] tokens: `Authorization: Bearer <token>`")


def get_ctx(request: Request) -> ServerContext:
    ctx = getattr(request.app.state, "maze", None)
    if ctx is None:
        raise HTTPException(503, "the server is starting or stopping")
    return ctx


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _foreign(request: Request) -> str | None:
    """Why a request to a server without tokens does not come from this machine's own clients,
    or None. Such a server makes every caller its admin, so a web page must not be one: browsers
    send cross-origin form POSTs without asking (no CORS preflight), and DNS rebinding points a
    page's own name at 127.0.0.1. Hence: a Host that is not a loopback name, or an Origin other
    than the server's own or one of ``[server] cors_origins``, is refused. Clients that are not
    browsers (the SDK, curl) send no Origin."""
    host = request.headers.get("host")
    if host:
        try:
            name = urlsplit("//" + host).hostname or ""
        except ValueError:
            name = ""
        if not is_loopback(name):
            return (f"this server has no tokens and answers only to loopback names, not to {host!r} "
                    f"(configure [server] tokens to serve other names)")
    origin = request.headers.get("origin")
    if origin is not None:
        allowed = request.app.state.maze_config.server.cors_origins
        own = host and origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower())
        if not (own or origin in allowed or "*" in allowed):
            return (f"requests from web pages of other origins ({origin!r}) are refused by a server "
                    f"without tokens: add the origin to [server] cors_origins, or configure tokens")
    return None


def identify(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Identity | None:
    """The caller, None when a token is required but missing; 401 for a wrong token. Without
    tokens, the local admin - unless the request comes from a browser page elsewhere (403)."""
    tokens: TokenTable = request.app.state.maze_tokens
    if not tokens.enabled:
        reason = _foreign(request)
        if reason is not None:
            raise HTTPException(403, reason)
        return tokens.anonymous()
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        return None
    identity = tokens.identify(credentials.credentials)
    if identity is None:
        raise _unauthorized("invalid token")
    return identity


def current_identity(request: Request,
                     credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Identity:
    identity = identify(request, credentials)
    if identity is None:
        raise _unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    request.state.identity = identity
    return identity


def optional_identity(request: Request,
                      credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Identity | None:
    return identify(request, credentials)


def require_admin(identity: Identity = Depends(current_identity)) -> Identity:
    if not identity.admin:
        raise HTTPException(403, f"{identity.name!r} is not an admin; this needs an admin token "
                                 f"([server] admins)")
    return identity
