"""Who may read: anyone by default (the API listens on loopback), or, with ``RELEASE_READS_NEED_TOKEN``, only
holders of a write credential. A browser cannot put a header on a page load or an ``EventSource``, so reads
also accept the credential from the ``release_token`` cookie the dashboard sets; writes never do (a cookie
rides along on cross-site requests, a header does not)."""

from __future__ import annotations

from starlette.requests import Request

from release.bootstrap import App, authenticator

READ_COOKIE = "release_token"


class ReadAccess:
    """Checks one request's right to read; raises ``Unauthorized`` (401) when reads need a credential it lacks."""

    def __init__(self, app: App) -> None:
        self._required = app.settings.reads_need_token
        self._identities = authenticator(app.settings) if self._required else None

    @property
    def required(self) -> bool:
        """True when reads need a credential."""
        return self._required

    def check(self, request: Request) -> None:
        """Pass, or raise ``Unauthorized`` with the error table's hint."""
        if self._identities is None:
            return
        header = request.headers.get("authorization")
        cookie = request.cookies.get(READ_COOKIE)
        self._identities.actor(header if header or not cookie else f"Bearer {cookie}")
