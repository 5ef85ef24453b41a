"""
The ceiling: a bare twisted.web resource over a dict, the least any Twisted
HTTP key-value service can do per request. Usage: bare_server.py PORT
"""

import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site


class BareStore(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[bytes, bytes] = {}

    def render_GET(self, request):
        value = self.values.get(request.path)
        if value is None:
            request.setResponseCode(404)
            return b""
        return value

    def render_PUT(self, request):
        self.values[request.path] = request.content.read()
        request.setResponseCode(204)
        return b""


if __name__ == "__main__":
    site = Site(BareStore())
    site.log = lambda request: None
    # Ersid's backlog: Twisted's default of 50 drops bursts of connections.
    reactor.listenTCP(int(sys.argv[1]), site, backlog=1024, interface="127.0.0.1")
    print("listening", flush=True)
    reactor.run()
