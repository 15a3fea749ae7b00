"""The pod client: sends one request to a version's pods over keep-alive connections (``pod_http``), round robin.

A request is tried on the next pod only when this one never ran it: the connection failed, or the pod refused
with 503 not_ready (starting or draining). After a disconnect mid-answer or a timeout the pod may have run it,
so that answer (502 or 504) is final. When every pod refused, the answer says so and the caller decides. A pod's
``Retry-After`` (a 429 queue_full) is kept with its answer for the client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson
import structlog
from prometheus_client import Counter

from release.router.pod_http import PodConnections, PodUnreachable
from schemas.errors import Reason

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Answer:
    """What the pods answered, and whether every pod refused without running the request."""

    status: int
    body: bytes
    content_type: str = "application/json"
    upstream_s: float = 0.0
    refused: bool = False
    retry_after: str | None = None


class PodClient:
    """Keep-alive connections to all pods, with a round robin position per version."""

    def __init__(self, *, timeout_s: float, retries: Counter,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._timeout_s = timeout_s
        self._retries = retries
        self._clock = clock
        self._connections: PodConnections | None = None
        self._next: dict[str, int] = {}

    async def open(self) -> None:
        """Open the keep-alive pool."""
        self._connections = PodConnections(timeout_s=self._timeout_s)

    async def close(self) -> None:
        """Close the pool."""
        if self._connections is not None:
            self._connections.close()

    async def send(self, version: str, endpoints: tuple[str, ...], path: str, body: bytes,
                   headers: Mapping[str, str]) -> Answer:
        """POST to the version's pods from the next in turn, moving on only past pods that ran nothing."""
        first = self._next.get(version, 0)
        self._next[version] = first + 1
        answer = Answer(status=503, body=b"", refused=True)
        for attempt in range(len(endpoints)):
            endpoint = endpoints[(first + attempt) % len(endpoints)]
            answer = await self._post(endpoint, path, body, headers)
            if not answer.refused:
                return answer
            self._retries.inc()
        return answer

    async def _post(self, endpoint: str, path: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        assert self._connections is not None, "open() the pool first"
        t0 = self._clock()
        try:
            resp = await self._connections.post(endpoint, path, body, headers)
            return Answer(status=resp.status, body=resp.body, content_type=resp.content_type or "application/json",
                          upstream_s=self._clock() - t0, refused=_not_ready(resp.status, resp.body),
                          retry_after=resp.retry_after)
        except PodUnreachable as exc:
            # Connection refused or reset before sending: the pod never saw it, another pod may take it.
            log.warning("router.pod_unreachable", url=endpoint + path, error=str(exc))
            return Answer(status=503, refused=True, body=orjson.dumps(
                {"error": f"pod unreachable: {exc}", "reason": str(Reason.UNAVAILABLE)}))
        except OSError as exc:  # TimeoutError among them
            # The pod may have run it (disconnect mid-answer, timeout): answer, never retry.
            log.warning("router.pod_failed", url=endpoint + path, error=f"{type(exc).__name__}: {exc}")
            return Answer(status=504 if isinstance(exc, TimeoutError) else 502, upstream_s=self._clock() - t0,
                          body=orjson.dumps({"error": f"pod failed: {type(exc).__name__}: {exc}",
                                             "reason": str(Reason.UNAVAILABLE)}))


def _not_ready(status: int, payload: bytes) -> bool:
    """True when a pod refused with 503 not_ready (starting or draining): it ran nothing."""
    if status != 503:
        return False
    try:
        return bool(orjson.loads(payload).get("reason") == str(Reason.NOT_READY))
    except (orjson.JSONDecodeError, AttributeError):
        return False
