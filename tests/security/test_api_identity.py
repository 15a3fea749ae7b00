"""Who writes through the management API: named tokens by hash, and Google-signed ID tokens verified with
google-auth against certificates served over real HTTP."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from release.adapters.google_identity import GoogleIdTokenVerifier
from release.identity import Authenticator, load_tokens, new_token
from schemas.errors import PermanentError, Unauthorized
from tests.servers.in_thread import serve_in_thread

AUDIENCE = "https://release.example.com"


def test_a_new_token_is_admitted_by_its_line_and_the_file_holds_no_secret(tmp_path: Path):
    """`release token new` output: the line stores the hash only, and the token then authenticates as its name."""
    token, line = new_token("ci-pipeline")
    assert token not in line
    path = tmp_path / "tokens"
    path.write_text(f"# comment\n\n{line}\n")
    assert Authenticator(tokens=load_tokens(path)).actor(f"Bearer {token}") == "ci-pipeline"


def test_a_malformed_tokens_file_is_refused_with_its_line(tmp_path: Path):
    """A line that is not `NAME sha256:HEX` stops startup with where it is, instead of admitting nobody silently."""
    path = tmp_path / "tokens"
    path.write_text("ana plaintext-token\n")
    with pytest.raises(PermanentError, match="tokens:1"):
        load_tokens(path)


def test_no_configured_credential_refuses_every_write():
    """With nothing configured the API is read-only, and says how to enable writes."""
    with pytest.raises(Unauthorized) as refused:
        Authenticator().actor("Bearer anything")
    assert "RELEASE_API_TOKENS_FILE" in refused.value.hint


@pytest.fixture(scope="module")
def google_keys() -> Iterator[tuple[crypt.RSASigner, str]]:
    """A signing key and the URL of a real HTTP endpoint serving its certificate as Google's certs endpoint does."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-google-certs")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()

    async def certs(_request: object) -> JSONResponse:
        return JSONResponse({"kid-1": pem})

    with serve_in_thread(Starlette(routes=[Route("/certs", certs)]), name="google-certs") as url:
        yield crypt.RSASigner.from_string(private, key_id="kid-1"), f"{url}/certs"


def _id_token(signer: crypt.RSASigner, **claims: object) -> str:
    now = int(time.time())
    payload = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "iat": now, "exp": now + 300,
               "email": "ana@example.com", "email_verified": True, **claims}
    return jwt.encode(signer, payload).decode()


@pytest.mark.parametrize(("claims", "actor"), [
    ({}, "ana@example.com"),
    ({"aud": "https://elsewhere.example.com"}, None),
    ({"iss": "https://evil.example.com"}, None),
    ({"email_verified": False}, None),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, None),
])
def test_google_id_tokens_are_verified_and_the_email_is_the_actor(google_keys, claims, actor):
    """Signature, audience, issuer, expiry and a verified email are all required; the email is the actor."""
    signer, certs_url = google_keys
    authenticator = Authenticator(id_tokens=GoogleIdTokenVerifier(audience=AUDIENCE, certs_url=certs_url))
    header = f"Bearer {_id_token(signer, **claims)}"
    if actor is None:
        with pytest.raises(Unauthorized):
            authenticator.actor(header)
    else:
        assert authenticator.actor(header) == actor


def test_an_id_token_signed_by_another_key_is_refused(google_keys):
    """A well-formed token signed with a key Google never published is refused."""
    _signer, certs_url = google_keys
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    forged = _id_token(crypt.RSASigner.from_string(other, key_id="kid-1"))
    authenticator = Authenticator(id_tokens=GoogleIdTokenVerifier(audience=AUDIENCE, certs_url=certs_url))
    with pytest.raises(Unauthorized):
        authenticator.actor(f"Bearer {forged}")
