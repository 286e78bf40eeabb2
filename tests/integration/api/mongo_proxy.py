"""A TCP proxy in front of MongoDB that can lose commitTransaction replies, or the commits.

A real network fault, not a mock: the driver and the server speak their wire protocol
through it unchanged, except that while `mode` is set, a message carrying
`commitTransaction` is either forwarded and its connection then cut before the reply
comes back (`"cut_after_commit"`: the server committed, the client cannot know), or cut
without being forwarded (`"drop_commit"`: the server never committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from infra.devstack import free_port

Mode = Literal["pass", "cut_after_commit", "drop_commit"]
COMMIT = b"commitTransaction\x00"


@dataclass
class MongoProxy:
    upstream_host: str
    upstream_port: int
    port: int = field(default_factory=free_port)
    mode: Mode = "pass"
    commits_seen: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        back = asyncio.create_task(self._pump(up_reader, writer))
        self._tasks.add(back)
        back.add_done_callback(self._tasks.discard)
        try:
            while True:
                header = await reader.readexactly(4)
                (length,) = struct.unpack("<i", header)
                message = header + await reader.readexactly(length - 4)
                if COMMIT in message and self.mode != "pass":
                    self.commits_seen += 1
                    if self.mode == "cut_after_commit":
                        up_writer.write(message)
                        await up_writer.drain()
                        # Let the server apply it before the client's side goes away.
                        await asyncio.sleep(0.2)
                    back.cancel()
                    return
                up_writer.write(message)
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            back.cancel()
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


@contextlib.asynccontextmanager
async def mongo_proxy(host: str, port: int) -> AsyncIterator[MongoProxy]:
    proxy = MongoProxy(host, port)
    proxy._server = await asyncio.start_server(proxy._handle, "127.0.0.1", proxy.port)
    try:
        yield proxy
    finally:
        proxy._server.close()
        for task in list(proxy._tasks):
            task.cancel()
        await asyncio.gather(*proxy._tasks, return_exceptions=True)
        await proxy._server.wait_closed()
