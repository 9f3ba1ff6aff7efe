"""Bearer-token access: every call but health needs a token; loading and unloading models
need one with scope `admin`, everything else one with scope `inference` (or `admin`).

Tokens come from `--auth-tokens-file` and `CONVSERVE_AUTH_TOKENS` as TOKEN:SCOPE entries. The
server keeps only their SHA-256 digests and compares a presented token with every one of
them in constant time; no token ever reaches a log line, an error message or a metric.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from service.boundary import refusing
from service.tokens import Tokens, digest

__all__ = ["TokenAuth"]

ADMIN_METHODS = frozenset(
    f"/inference.GRPCInferenceService/RepositoryModel{action}" for action in ("Load", "Unload")
)
OPEN_PREFIX = "/grpc.health.v1.Health/"  # probes never need a token

if TYPE_CHECKING:  # generic for the type checker only
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.aio.ServerInterceptor


class TokenAuth(Interceptor):
    """Refuses a call without a valid token (UNAUTHENTICATED) or outside its token's scope
    (PERMISSION_DENIED) before any of its messages is read."""

    def __init__(self, tokens: Tokens) -> None:
        if not tokens:
            raise ValueError("token authentication needs at least one token")
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(OPEN_PREFIX):
            return handler
        values = [v for k, v in details.invocation_metadata or () if k == "authorization"]
        refusal = self.refusal(method, values[0] if values and isinstance(values[0], str) else "")
        if refusal is None:
            return handler
        return refusing(handler, method.rsplit("/", 1)[-1], *refusal)

    def refusal(self, method: str, authorization: str) -> tuple[grpc.StatusCode, str] | None:
        """Why a call of `method` ("/package.Service/Method") with this `authorization`
        header is refused (status, message), or None: it may go on. The HTTP door asks too,
        with the gRPC method its route stands for."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return (
                grpc.StatusCode.UNAUTHENTICATED,
                "this server needs a bearer token: send 'authorization: Bearer TOKEN'",
            )
        scope = self._scope(token.strip())
        if scope is None:
            return grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid"
        if method in ADMIN_METHODS and scope != "admin":
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method.rsplit('/', 1)[-1]} needs a token with scope admin; "
                f"this token's scope is {scope}",
            )
        return None

    def _scope(self, token: str) -> str | None:
        """The token's scope; every known digest is compared, in constant time each."""
        presented, found = digest(token), None
        for known, scope in self._tokens:
            if hmac.compare_digest(known, presented):
                found = scope
        return found
