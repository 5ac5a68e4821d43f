"""waitress in each worker.

    pyforkd run examples/own_server/waitress_server.py -i 2 --policy shared


waitress serves the worker's listening socket (policy "shared"); the stop closes it, and
waitress's loop ends.
"""

import os

from waitress import create_server

from pyforkd import cluster

PORT = int(os.environ.get("PORT", "8000"))


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


if cluster.is_primary:
    cluster.setup_primary(policy="shared")
    cluster.fork()
    cluster.run()
else:
    sock = cluster.listen(("127.0.0.1", PORT)).listening_socket()
    server = create_server(app, sockets=[sock], threads=4)
    cluster.on("stopping", server.close)
    server.run()
