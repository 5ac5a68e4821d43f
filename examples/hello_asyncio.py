"""The HTTP greeting of hello_http.py, served with asyncio in each worker.

    pyforkd run examples/hello_asyncio.py -i max      # then: curl http://127.0.0.1:3000/

``cluster.start_server`` is ``asyncio.start_server`` for a cluster worker: the primary
hands connections over (under every policy) and each becomes a reader/writer pair.
"""

from __future__ import annotations

import asyncio
import os

from pyforkd import cluster


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    body = f"hello from worker {cluster.worker.id} (pid {os.getpid()})\n".encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    writer.close()


async def main() -> None:
    port = int(os.environ.get("PORT", "3000"))
    server = await cluster.start_server(greet, ("127.0.0.1", port))
    await server.wait_closed()  # until the primary stops this worker


if cluster.is_worker:
    asyncio.run(main())
else:
    print("run me with: pyforkd run examples/hello_asyncio.py -i max")
