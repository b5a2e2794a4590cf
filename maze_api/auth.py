"""Bearer-token authentication.

Tokens come from ``[server] tokens`` (``MAZE_SERVER_TOKENS``) and ``[server] tokens_file``, one
``name=token`` or ``name=sha256:<hex>`` each. Only sha256 digests are kept: plain tokens are hashed
as they are read and the configuration is rewritten with the hashed form, so the plain text is not
held anywhere once the app is built. The *name* identifies the caller: it is recorded as the actor
(and so the owner) of the runs it submits; the token itself is never stored or logged.

With no tokens at all the API is open (identity ``local``, an admin), which is allowed on a loopback
address only: ``create_app`` refuses any other host without tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from maze_core.config import MazeConfig
from maze_core.errors import ConfigError

HASH_PREFIX = "sha256:"
MIN_TOKEN_LENGTH = 16
ANONYMOUS = "local"
RESERVED_NAMES = frozenset({ANONYMOUS, "server", "cli", "system"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: a token's name, and whether it may administer the server."""

    name: str
    admin: bool = False


def hash_token(token: str) -> str:
    """The stored form of a token: ``sha256:<hex digest>``."""
    return HASH_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts; ``0.0.0.0`` does not)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token_name(name: str, origin: str) -> str:
    """``name`` if a token may carry it; ``ConfigError`` saying why not."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{origin}: token name {name!r} is invalid: use up to 64 letters, digits, "
                          f"'_', '.', '@' and '-'")
    if name in RESERVED_NAMES:
        raise ConfigError(f"{origin}: token name {name!r} is reserved; pick another")
    return name


def _parse_entry(entry: str, origin: str) -> tuple[str, str]:
    """``(name, sha256 hex)`` from one ``name=token`` / ``name=sha256:<hex>`` entry."""
    name, sep, secret = entry.strip().partition("=")
    name, secret = name.strip(), secret.strip()
    if not sep or not name or not secret:
        raise ConfigError(f"{origin}: a token entry must look like 'name=token' or 'name=sha256:<hex>' "
                          f"(entry for {name or '?'!r} is malformed)")
    check_token_name(name, origin)
    if secret.startswith(HASH_PREFIX):
        digest = secret[len(HASH_PREFIX):].lower()
        if not _HEX.fullmatch(digest):
            raise ConfigError(f"{origin}: token {name!r}: a hashed token is 'sha256:' and 64 hex digits")
        return name, digest
    if len(secret) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{origin}: token {name!r} is shorter than {MIN_TOKEN_LENGTH} characters; "
                          f"use `maze token new {name}` for a strong one")
    return name, hash_token(secret)[len(HASH_PREFIX):]


class TokenTable:
    """Token digests by name, and who is an admin. Lookups compare digests in constant time."""

    def __init__(self, digests: dict[str, str], admins: set[str]):
        self._digests = {name: bytes.fromhex(d) for name, d in digests.items()}
        self.admins = frozenset(admins)

    @classmethod
    def from_config(cls, config: MazeConfig) -> TokenTable:
        """Read ``[server] tokens``, ``tokens_file`` and ``admins``; replace plain tokens in
        ``config`` by their hashes. Raises ``ConfigError`` naming the problem."""
        sc = config.server
        digests: dict[str, str] = {}
        hashed_entries: list[str] = []

        def add(entry: str, origin: str) -> tuple[str, str]:
            name, digest = _parse_entry(entry, origin)
            if name in digests:
                raise ConfigError(f"{origin}: token name {name!r} appears twice")
            if digest in digests.values():
                raise ConfigError(f"{origin}: token {name!r} is the same as another name's token")
            digests[name] = digest
            return name, digest

        for entry in sc.tokens:
            name, digest = add(entry, "[server] tokens")
            hashed_entries.append(f"{name}={HASH_PREFIX}{digest}")
        if sc.tokens_file:
            path = config.resolve(sc.tokens_file)
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(f"[server] tokens_file {path}: cannot read it: {exc}") from None
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    add(line, f"{path}:{number}")
        if hashed_entries != list(sc.tokens):
            sc.tokens = hashed_entries   # no plain token stays in the configuration
        unknown = sorted(set(sc.admins) - set(digests))
        if unknown:
            raise ConfigError(f"[server] admins names {', '.join(map(repr, unknown))}, which no token has")
        return cls(digests, set(sc.admins))

    @property
    def enabled(self) -> bool:
        """Whether callers must present a token."""
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, token: str) -> Identity | None:
        """The identity holding ``token``, or None."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for name, expected in self._digests.items():   # no early exit: timing says nothing
            if hmac.compare_digest(digest, expected):
                found = name
        return None if found is None else Identity(found, found in self.admins)

    def anonymous(self) -> Identity:
        return Identity(ANONYMOUS, admin=True)


def check_exposure(config: MazeConfig, tokens: TokenTable) -> None:
    """Refuse to serve beyond loopback without tokens."""
    if not tokens.enabled and not is_loopback(config.server.host):
        raise ConfigError(
            f"the server would listen on {config.server.host}, beyond loopback, without authentication: "
            f"set [server] tokens (or MAZE_SERVER_TOKENS, or [server] tokens_file), or bind 127.0.0.1. "
            f"`maze token new NAME` makes a token.")
