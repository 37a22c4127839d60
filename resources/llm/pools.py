"""Connection pooling for the LLM backends: two HTTP stacks, one pool per event loop.

- sync: one `httpx.Client` per backend, shared by every thread;
- async: per event loop, an `httpx.AsyncClient` over the httpx-aiohttp transport (probes, streams)
  and, on the same aiohttp connection pool, the raw `aiohttp.ClientSession` that non-streamed
  completions use directly (httpx's request and response models cost about 0.45 ms of CPU per
  call over aiohttp's own: benchmarks/profile_runner.py).
The environment's proxy is looked up once per pool, never per request. `Timeouts` (the core's one
timeout type) is converted here, once per pool and transport.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from gemantria_dag.llm.call import Timeouts


def httpx_timeout(timeouts: Timeouts) -> httpx.Timeout:
    """`timeouts` for httpx. No pool timeout: callers bound their concurrency; a queued call waits."""
    return httpx.Timeout(timeouts.read, connect=timeouts.connect, pool=None)


def aiohttp_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    """`timeouts` for aiohttp: `read` bounds the whole attempt (`total`: a body that trickles in byte by
    byte cannot outlast it) and each socket read; no pool timeout (callers bound their concurrency)."""
    return aiohttp.ClientTimeout(total=timeouts.read, sock_connect=timeouts.connect, sock_read=timeouts.read)


@dataclass(slots=True)
class AsyncPool:
    """One event loop's HTTP clients, sharing one aiohttp connection pool."""

    client: httpx.AsyncClient
    session: aiohttp.ClientSession
    headers: dict[str, str]
    timeout: aiohttp.ClientTimeout  # the backend's default, in aiohttp's terms
    proxy: Any | None = None  # the environment's proxy for the chat URL, looked up once
    proxy_auth: aiohttp.BasicAuth | None = None


@dataclass(slots=True)
class PoolSpec:
    """What every pool of a backend is opened with."""

    headers: Callable[[], dict[str, str]]  # read when a pool opens (the secret comes from the settings)
    timeouts: Timeouts
    size: int
    trust_env: bool
    chat_url: str


class ConnectionPools:
    """A backend's sync client and per-loop async pools, opened lazily, closed together."""

    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._aclients: dict[asyncio.AbstractEventLoop, AsyncPool] = {}

    @property
    def open_count(self) -> tuple[int, int]:
        """(sync clients open: 0 or 1, async pools open)."""
        return (0 if self._client is None else 1), len(self._aclients)

    def grow(self, size: int) -> None:
        """Pools opened from now on hold at least `size` connections."""
        if size > self.spec.size:
            self.spec.size = size

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(max_connections=self.spec.size, max_keepalive_connections=self.spec.size)

    def sync_client(self) -> httpx.Client:
        """The shared sync client (thread-safe)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    spec = self.spec
                    self._client = httpx.Client(
                        headers=spec.headers(),
                        timeout=httpx_timeout(spec.timeouts),
                        limits=self._limits(),
                        trust_env=spec.trust_env,
                    )
                client = self._client
        return client

    def async_pool(self) -> AsyncPool:
        """The running loop's pool, opened on first use."""
        loop = asyncio.get_running_loop()
        pool = self._aclients.get(loop)
        if pool is not None:
            return pool
        with self._lock:
            pool = self._aclients.get(loop)
            if pool is None:
                # An async client belongs to the loop it first ran on; drop those of finished loops.
                for old_loop in [lp for lp in self._aclients if lp.is_closed()]:
                    _discard(old_loop, self._aclients.pop(old_loop))
                pool = self._new_async_pool()
                self._aclients[loop] = pool
        return pool

    def _new_async_pool(self) -> AsyncPool:
        spec = self.spec
        limits, timeout, headers = self._limits(), httpx_timeout(spec.timeouts), spec.headers()
        # The session is ours (not the transport's lazy one) so the hot path can use it too, on the same
        # connections. trust_env stays off in the session: with it on, aiohttp looks up .netrc and the
        # proxy variables in a worker thread on every request (two thread hops a call); the proxy is
        # looked up here once instead, and the key travels in the Authorization header.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=limits.max_connections or 0, limit_per_host=0, keepalive_timeout=limits.keepalive_expiry
            )
        )
        proxy, proxy_auth = env_proxy(spec.chat_url) if spec.trust_env else (None, None)
        transport = AiohttpTransport(limits=limits, trust_env=spec.trust_env, client=session)
        client = httpx.AsyncClient(
            headers=headers, timeout=timeout, limits=limits, transport=transport, trust_env=spec.trust_env
        )
        return AsyncPool(client, session, headers, aiohttp_timeout(spec.timeouts), proxy, proxy_auth)

    def close(self) -> None:
        """Close every client; the next call opens new ones."""
        with self._lock:
            client, self._client = self._client, None
            aclients, self._aclients = self._aclients, {}
        if client is not None:
            client.close()
        for loop, pool in aclients.items():
            _discard(loop, pool)

    async def aclose(self) -> None:
        """Close the running loop's pool from inside it (cleanest for async code), then the rest."""
        loop = asyncio.get_running_loop()
        with self._lock:
            pool = self._aclients.pop(loop, None)
        if pool is not None:
            await pool.client.aclose()
        self.close()


def env_proxy(url: str) -> tuple[Any | None, aiohttp.BasicAuth | None]:
    """(proxy, auth) the environment (HTTP(S)_PROXY, NO_PROXY) sets for `url`, as aiohttp would find it."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        return get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None


def _discard(loop: asyncio.AbstractEventLoop, pool: AsyncPool) -> None:
    """Close a loop's clients from outside that loop, as well as the loop's state allows."""
    if loop.is_closed():
        _abandon(pool.session)
        return
    try:
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(pool.client.aclose(), loop)
        else:
            loop.run_until_complete(pool.client.aclose())
    except RuntimeError:
        _abandon(pool.session)


def _abandon(session: aiohttp.ClientSession) -> None:
    """Its loop is gone, so nothing can be awaited: mark the aiohttp session closed so that it does not
    log an error when collected; the sockets close when the garbage collector takes their transports."""
    if not session.closed:
        connector = session.connector
        session.detach()
        close_now = getattr(connector, "_close", None)
        if callable(close_now):
            close_now()
