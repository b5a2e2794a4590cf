"""Request dependencies: the server context and the caller's identity."""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .auth import Identity, TokenTable
from .context import ServerContext

bearer = HTTPBearer(auto_error=False, description="A token from [server] tokens: `Authorization: Bearer <token>`")


def get_ctx(request: Request) -> ServerContext:
    ctx = getattr(request.app.state, "maze", None)
    if ctx is None:
        raise HTTPException(503, "the server is starting or stopping")
    return ctx


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def identify(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Identity | None:
    """The caller, None when a token is required but missing; 401 for a wrong token."""
    tokens: TokenTable = request.app.state.maze_tokens
    if not tokens.enabled:
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
