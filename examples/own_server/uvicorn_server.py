"""Your own uvicorn ``Server`` in each worker.

    pyforkd run examples/own_server/uvicorn_server.py -i 2 --policy shared


A server that accepts by itself needs a real listening socket (policy "shared"), and
hears its stop through ``cluster.on("stopping")``: a reload or a stop then waits for it
to finish, not for the graceful timeout.  (``pyforkd run myapp:app`` does all this for
you, under every policy.)
"""

import os

import uvicorn

from pyforkd import cluster


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})


PORT = int(os.environ.get("PORT", "8000"))

if cluster.is_primary:
    cluster.setup_primary(policy="shared")
    cluster.fork()
    cluster.run()
else:
    sock = cluster.listen(("127.0.0.1", PORT)).listening_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    cluster.on("stopping", lambda: setattr(server, "should_exit", True))
    server.run(sockets=[sock])
