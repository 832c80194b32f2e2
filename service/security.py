"""The optional API key (DENSEPRED_API_KEY): required on inference and /models when set.

The key travels as `Authorization: Bearer <key>` or `X-API-Key: <key>`. The health, readiness and
metrics endpoints stay open: orchestrators and Prometheus probe them without credentials.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.errors import ApiError
from service.schemas import ErrorBody

_bearer = HTTPBearer(auto_error=False, description="The DENSEPRED_API_KEY value as a bearer token.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The DENSEPRED_API_KEY value.")

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong API key (only when the server has one)."}
}


def api_key_dependency(key: SecretStr) -> Any:
    """A router dependency that refuses requests without `key`, compared in constant time."""
    expected = key.get_secret_value().encode()

    async def require_api_key(
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header: Annotated[str | None, Depends(_header)],
    ) -> None:
        given = bearer.credentials if bearer is not None else header
        if given is None or not hmac.compare_digest(given.encode(), expected):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                {"WWW-Authenticate": "Bearer"},
            )

    return Depends(require_api_key)
