"""
The HTTP side of Ersid: the API and the site that serves it.

| module | what it holds |
| --- | --- |
| C{app} | L{Service}: the Klein application, the one definition of the API |
| C{keys} | the key routes, C{/<key>}, declared once for Klein and the fast path |
| C{conditions} | ETags, C{If-Match} and C{If-None-Match} |
| C{parsing} | keys, content types, query parameters and bodies, checked |
| C{errors} | L{ApiError} and the JSON every error is answered in |
| C{fastpath} | the API as a twisted.web resource: key routes, then Klein |
| C{protocol} | a connection: requests parsed by llhttp, deadlines, flow control |
| C{reading} | what a connection checks beyond llhttp, and its refusals |
| C{sending} | a response sent at once when the socket can take it |
| C{exchange} | a request as read, and the light request of the fast path |
| C{slowpath} | requests handed to twisted.web and Klein |
| C{site} | the factory of connections: shared limits, access log |
| C{traffic} | what the connections count for C{/_metrics}, cheaply |
| C{openapi.json} | the API's OpenAPI 3 description |
"""

from ersid.web.app import DEFAULT_MAX_VALUE_SIZE, Service
from ersid.web.site import makeSite
from ersid.web.traffic import Traffic

__all__ = ["DEFAULT_MAX_VALUE_SIZE", "Service", "Traffic", "makeSite"]
