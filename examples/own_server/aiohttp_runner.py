"""aiohttp's runner in each worker.

    pyforkd run examples/own_server/aiohttp_runner.py -i 2 --policy shared


``SockSite`` takes the worker's listening socket (policy "shared"); the worker's stop
comes through ``cluster.on("stopping")``, from pyforkd's thread into the loop.
"""

import asyncio
import os

from aiohttp import web

from pyforkd import cluster

PORT = int(os.environ.get("PORT", "8000"))


async def pid(request: web.Request) -> web.Response:
    return web.Response(text=str(os.getpid()))


async def serve() -> None:
    app = web.Application()
    app.router.add_get("/", pid)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = cluster.listen(("127.0.0.1", PORT)).listening_socket()
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    cluster.on("stopping", lambda: loop.call_soon_threadsafe(stop.set))
    await stop.wait()
    await runner.cleanup()  # (it finishes the requests in progress)


if cluster.is_primary:
    cluster.setup_primary(policy="shared")
    cluster.fork()
    cluster.run()
else:
    asyncio.run(serve())
