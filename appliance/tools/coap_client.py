"""A small asynchronous client of the appliance's CoAP API (docs/device.md, local API).

One helper for everything that talks to a device from outside: the console, the
``gochat-appliance status`` command, the test bed and the benchmarks. Bodies are JSON
(content-format 50) both ways; every answer becomes a :class:`Reply`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Self

import aiocoap
from aiocoap.numbers.codes import Code

JSON_FORMAT = 50


@dataclass(frozen=True, slots=True)
class Reply:
    """A CoAP response: ``code`` dotted (``"2.05"``), ``body`` decoded JSON (else the raw
    bytes, or None when empty)."""

    code: str
    body: Any
    content_format: int | None

    @property
    def ok(self) -> bool:
        """Whether the code is a success (2.xx)."""
        return self.code.startswith("2.")


def reply_of(message: aiocoap.Message) -> Reply:
    """The :class:`Reply` of an aiocoap response."""
    payload = bytes(message.payload)
    try:
        body = json.loads(payload) if payload else None
    except ValueError:
        body = payload
    fmt = message.opt.content_format
    return Reply(message.code.dotted, body, int(fmt) if fmt is not None else None)


class Observation:
    """An Observe of one resource: :meth:`first` answer, then the notifications."""

    def __init__(self, request: Any) -> None:
        self._request = request

    async def first(self, timeout_s: float | None = None) -> Reply:
        """The answer to the initial GET."""
        return reply_of(await asyncio.wait_for(self._request.response, timeout_s))

    async def notifications(self) -> AsyncIterator[Reply]:
        """Every later notification, until the device or :meth:`cancel` ends it."""
        async for note in self._request.observation:
            yield reply_of(note)

    def cancel(self) -> None:
        """Stop observing."""
        with contextlib.suppress(Exception):
            self._request.observation.cancel()


class CoapClient:
    """An aiocoap client context for the appliance's API (UDP only)."""

    def __init__(self, context: aiocoap.Context) -> None:
        self._context = context

    @classmethod
    async def create(cls) -> Self:
        """A client with a fresh context."""
        return cls(await aiocoap.Context.create_client_context(transports=["udp6"]))

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_format: int | None = JSON_FORMAT,
        timeout_s: float | None = None,
    ) -> Reply:
        """One request; ``body`` is sent as JSON unless ``raw`` bytes are given."""
        payload = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        message = aiocoap.Message(code=Code[method], uri=_uri(host, port, path), payload=payload)
        if payload and content_format is not None:
            message.opt.content_format = content_format
        response = await asyncio.wait_for(self._context.request(message).response, timeout_s)
        return reply_of(response)

    def observe(self, host: str, port: int, path: str = "/status") -> Observation:
        """Start observing ``path``."""
        message = aiocoap.Message(code=Code.GET, uri=_uri(host, port, path), observe=0)
        return Observation(self._context.request(message))

    async def close(self) -> None:
        """Release the context (errors on the way out are of no interest)."""
        with contextlib.suppress(Exception):
            await self._context.shutdown()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _uri(host: str, port: int, path: str) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"coap://{host}:{port}{path}"
