"""An ASGI app for the cluster's tests: lifespan noted in a file per worker."""

import asyncio
import os
import time


def _note(what):
    where = os.environ.get("ASGI_TEST_DIR")
    if where:
        with open(os.path.join(where, f"{what}.{os.getpid()}"), "w"):
            pass


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if os.environ.get("ASGI_TEST_FAIL_START"):
                    await send({"type": "lifespan.startup.failed", "message": "no database"})
                    return
                _note("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _note("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":  # an echo, until the client closes
        await receive()  # (websocket.connect)
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": f"{os.getpid()}:{message.get('text')}"})
    path = scope["path"]
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if path == "/slow":
        await asyncio.sleep(float(scope["query_string"] or 1))
        body = b"slow done"
    elif path == "/block":  # a handler that blocks the loop itself
        time.sleep(float(scope["query_string"] or 1))
        body = b"block done"
    elif path == "/pid":
        body = str(os.getpid()).encode()
    elif path != "/echo":
        body = b"hello"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
