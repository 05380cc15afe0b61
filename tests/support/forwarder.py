"""A plain TCP forwarder, run as its own process: ``forwarder.py LISTEN=TARGET ...``
(each ``HOST:PORT``); prints ``ready`` once every listener is bound.

The multi-host test runs one inside each network namespace ("host"), so that the
peers' loopback addresses (Keystone's catalog says ``127.0.0.1:PORT``) lead out
over the host's veth link, and one in the root namespace that takes them from
the veth addresses to the real peers on loopback.

A side that ends cleanly is passed on as a half-close (a killed daemon's
sockets are closed by its kernel: PostgreSQL then ends that session instead of
keeping it); a side that breaks closes both.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

CHUNK = 1 << 16


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.transport.abort()
        raise


async def _forward(
    target: tuple[str, int], client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
) -> None:
    try:
        upstream_r, upstream_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.transport.abort()
        return
    pipes = [
        asyncio.ensure_future(_pipe(client_r, upstream_w)),
        asyncio.ensure_future(_pipe(upstream_r, client_w)),
    ]
    done, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
    if pending and any(task.exception() for task in done):
        for task in pending:
            task.cancel()
    await asyncio.gather(*pipes, return_exceptions=True)
    for writer in (client_w, upstream_w):
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _serve(routes: list[tuple[tuple[str, int], tuple[str, int]]]) -> None:
    servers = []
    for listen, target in routes:

        async def handle(
            reader: asyncio.StreamReader,
            writer: asyncio.StreamWriter,
            target: tuple[str, int] = target,
        ) -> None:
            await _forward(target, reader, writer)

        servers.append(await asyncio.start_server(handle, *listen, reuse_address=True))
    print("ready", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str]) -> None:
    routes = []
    for argument in argv:
        listen, _, target = argument.partition("=")
        routes.append((_address(listen), _address(target)))
    asyncio.run(_serve(routes))


if __name__ == "__main__":
    main(sys.argv[1:])
