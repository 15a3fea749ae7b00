"""Google-signed ID tokens (Cloud Run, IAP, service accounts calling with `gcloud auth print-identity-token`),
verified with google-auth: signature against Google's published certificates, audience, issuer, expiry."""

from __future__ import annotations

import google.auth.exceptions
import google.auth.transport.requests
import structlog
from google.oauth2 import id_token

log = structlog.get_logger(__name__)

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})


class GoogleIdTokenVerifier:
    """``IdTokenVerifier`` for tokens whose audience is this API's URL; the actor is the verified email."""

    def __init__(self, *, audience: str, certs_url: str = GOOGLE_CERTS_URL,
                 issuers: frozenset[str] = GOOGLE_ISSUERS) -> None:
        self._audience = audience
        self._certs_url = certs_url
        self._issuers = issuers
        self._request = google.auth.transport.requests.Request()

    def verify(self, token: str) -> str | None:
        """The verified email of a valid token, else None (the reason is logged, not returned to the caller)."""
        try:
            claims = id_token.verify_token(token, self._request, audience=self._audience,
                                           certs_url=self._certs_url)
        except (ValueError, google.auth.exceptions.GoogleAuthError) as exc:
            log.info("id_token.refused", error=str(exc))
            return None
        if claims.get("iss") not in self._issuers or not claims.get("email_verified"):
            log.info("id_token.refused", error="issuer or email not verified", issuer=claims.get("iss"))
            return None
        email = claims.get("email")
        return email if isinstance(email, str) and email else None
