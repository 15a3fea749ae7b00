"""Who is calling the management API. The audit actor comes from the credential, never from a header the caller
writes: a named token's name, or the email of a Google-signed ID token.

Named tokens live in a file of ``NAME sha256:HEX`` lines (RELEASE_API_TOKENS_FILE), so the file holds no secret;
the single RELEASE_API_TOKEN, when set, is the actor ``api-token``. Anything malformed is a 401, never a crash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from schemas.errors import PermanentError, Reason, Unauthorized

SINGLE_TOKEN_ACTOR = "api-token"  # noqa: S105  (an actor name, not a secret)
_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9@._-]{0,127})\s+sha256:(?P<hash>[0-9a-f]{64})$")
# What a bearer token may contain (RFC 6750's b64token); anything else is refused before it is compared.
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


@dataclass(frozen=True)
class NamedToken:
    """A token known by the sha256 of its value; ``name`` is the actor its writes are audited under."""

    name: str
    sha256: str


class IdTokenVerifier(Protocol):
    """Checks an OpenID Connect ID token (signature, audience, issuer); returns the verified email or None."""

    def verify(self, token: str) -> str | None:
        """The token's verified email, or None when it is not a valid token for this API."""
        ...


def token_hash(token: str) -> str:
    """The hex sha256 a tokens file stores for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(name: str) -> tuple[str, str]:
    """A fresh random token for ``name`` and the line that admits it in the tokens file."""
    token = secrets.token_urlsafe(32)
    line = f"{name} sha256:{token_hash(token)}"
    if not _LINE.match(line):
        raise PermanentError(f"{name!r} is not a valid token name", reason=Reason.BAD_REQUEST,
                             hint="Use letters, digits and @._- (an email works), at most 128 characters.")
    return token, line


def load_tokens(path: Path) -> tuple[NamedToken, ...]:
    """Parse a tokens file; blank lines and ``#`` comments are skipped, anything else malformed is refused."""
    tokens = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise PermanentError(f"{path}:{number} is not `NAME sha256:HEX`", reason=Reason.INTERNAL,
                                 hint="Make lines with `release token new NAME`.")
        tokens.append(NamedToken(name=match["name"], sha256=match["hash"]))
    return tuple(tokens)


class Authenticator:
    """Turns an ``Authorization`` header into the actor that the write is audited under, or ``Unauthorized``."""

    def __init__(self, *, tokens: tuple[NamedToken, ...] = (), legacy_token: str = "",
                 id_tokens: IdTokenVerifier | None = None) -> None:
        self._tokens = tokens
        self._legacy = token_hash(legacy_token) if legacy_token else ""
        self._id_tokens = id_tokens

    @property
    def enabled(self) -> bool:
        """False when no credential can ever be accepted (writes are then refused outright)."""
        return bool(self._tokens or self._legacy or self._id_tokens)

    def actor(self, authorization: str | None) -> str:
        """The actor of a valid ``Bearer`` credential."""
        if not self.enabled:
            raise Unauthorized("management API writes are disabled: no token is configured",
                               hint="Set RELEASE_API_TOKENS_FILE (see `release token new`) or RELEASE_API_TOKEN.")
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not _TOKEN.match(token):
            raise Unauthorized("management API writes need `Authorization: Bearer TOKEN`")
        digest = token_hash(token)
        # Every candidate is compared, in constant time, so timing does not tell which names exist.
        matches = [t.name for t in self._tokens if hmac.compare_digest(digest, t.sha256)]
        if self._legacy and hmac.compare_digest(digest, self._legacy):
            matches.append(SINGLE_TOKEN_ACTOR)
        if matches:
            return matches[0]
        if self._id_tokens is not None and token.count(".") == 2:
            email = self._id_tokens.verify(token)
            if email:
                return email
        raise Unauthorized("the token is not valid for this API")
