"""One way every HTTP route of the control plane answers a refusal: the error table's status, the error's body
(``reason``, ``message``, ``hint``) and ``Retry-After`` where the table gives one."""

from __future__ import annotations

from starlette.responses import JSONResponse

from schemas.error_table import http_status, retry_after
from schemas.errors import ReleaseError


def error_response(error: ReleaseError) -> JSONResponse:
    """The JSON answer to ``error``, with the status and ``Retry-After`` of ``schemas.error_table``."""
    wait = retry_after(error)
    return JSONResponse(error.to_dict(), status_code=http_status(error),
                        headers={"Retry-After": wait} if wait else None)
