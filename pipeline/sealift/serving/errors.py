"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

Handlers raise APIError (or one of the helpers below); the app turns it into a
JSON response. Bad input is always a 4xx, never a 500.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class APIError(Exception):
    """An error a client should see as OpenAI would send it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def unauthorized(message: str) -> APIError:
    return APIError(
        401, message, type="invalid_request_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


def too_many_requests(limit: int) -> APIError:
    return APIError(
        429,
        f"This server takes at most {limit} requests at a time; retry shortly.",
        type="requests",
        code="rate_limit_exceeded",
        headers={"Retry-After": "1"},
    )


def not_ready(message: str) -> APIError:
    return APIError(503, message, type="server_error", code="model_not_ready", headers={"Retry-After": "5"})


def server_error(message: str) -> APIError:
    return APIError(500, message, type="server_error", code="internal_error")
