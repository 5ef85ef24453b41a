"""
The connection's reading of requests against an independent parser, h11:
for requests Hypothesis makes, well-formed, ambiguous or broken, both must
read the same method, target, header fields and body, or both refuse. The
only differences allowed are refusals of Ersid's own, each named below.
"""

from __future__ import annotations

import re

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from ersid.embedded.memory import DictStorage
from ersid.web.app import Service
from ersid.web.site import makeSite

from .._helpers import refusal

# Refusals of Ersid's own, where h11 accepts (see ersid.web.reading).
STRICTER = {
    "a request has one Content-Type header at most",
    "the Host header is not a host",
    "HTTP/1.0 has no Transfer-Encoding",
    # h11 reads any version X.Y; llhttp only 0.9 to 2.0, Ersid 1.0 and 1.1.
    "only HTTP/1.1 and HTTP/1.0 are served",
    "the request is not valid HTTP/1.1: Invalid HTTP version",
    # llhttp: RFC 9112 lets a recipient merge identical lengths; it refuses.
    "the request is not valid HTTP/1.1: Duplicate Content-Length",
    # h11 lets the coding win (RFC 9112 6.3 allows either); llhttp refuses.
    "the request is not valid HTTP/1.1: Transfer-Encoding can't be present "
    "with Content-Length",
    "the request is not valid HTTP/1.1: Content-Length can't be present "
    "with Transfer-Encoding",
}

_TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$*",
    min_size=1,
    max_size=8,
)
_VALUE = st.binary(max_size=12).map(
    lambda value: bytes(
        b for b in value if b in b" \t!\"#$%&'()*+,-./09:;<=>?@AZaz\\^_`{|}~\x80\xff"
    )
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """The bytes of one request, now and then with what makes it ambiguous."""
    method = draw(
        st.sampled_from(
            [b"GET", b"PUT", b"POST", b"DELETE", b"HEAD", b"PATCH"] * 3
            + [b"FOO", b"get"]
        )
    )
    target = b"/_echo/" + draw(st.text("abc%2F/?=&_~.-", max_size=10)).encode()
    version = draw(
        st.sampled_from([b"HTTP/1.1"] * 12 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2"])
    )
    fields: list[tuple[bytes, bytes]] = []
    if draw(st.integers(0, 9)):
        fields.append(
            (
                b"Host",
                draw(
                    st.sampled_from(
                        [b"example.com", b"127.0.0.1:80"] * 4 + [b"a b", b""]
                    )
                ),
            )
        )
    for _ in range(draw(st.integers(0, 3))):
        fields.append((draw(_TOKEN).encode(), draw(_VALUE)))
    body = draw(st.binary(max_size=20))
    framing = draw(
        st.sampled_from(
            [
                *["none", "length", "chunked"] * 4,
                "both",
                "two lengths",
                "wrong length",
            ]
        )
    )
    content = b""
    if framing in ("length", "both", "two lengths"):
        fields.append((b"Content-Length", b"%d" % len(body)))
        content = body
    if framing == "two lengths":
        fields.append(
            (
                b"Content-Length",
                draw(st.sampled_from([b"%d" % len(body), b"%d" % (len(body) + 1)])),
            )
        )
    if framing == "wrong length":
        fields.append(
            (b"Content-Length", draw(st.sampled_from([b"-1", b"1x", b"0x1", b" "])))
        )
    if framing in ("chunked", "both"):
        coding = draw(
            st.sampled_from(
                [b"chunked"] * 8 + [b"Chunked", b"gzip, chunked", b"identity"]
            )
        )
        fields.append((b"Transfer-Encoding", coding))
        size = draw(
            st.sampled_from(
                [b"%x" % len(body)] * 8 + [b"%X;a=b" % len(body), b"-1", b"zz"]
            )
        )
        content = (size + b"\r\n" + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    if draw(st.integers(0, 11)) == 0:
        fields.append((b"Content-Type", b"text/plain"))
        fields.append((b"Content-Type", b"image/png"))
    draw(st.randoms()).shuffle(fields)
    separator = draw(st.sampled_from([b": "] * 16 + [b":", b" : ", b":\t"]))
    line_end = draw(st.sampled_from([b"\r\n"] * 20 + [b"\n"]))
    lines = [method + b" " + target + b" " + version]
    lines += [name + separator + value for name, value in fields]
    head = line_end.join(lines) + line_end * 2
    if draw(st.integers(0, 19)) == 0 and fields:
        head = head.replace(line_end, line_end + b" folded" + line_end, 1)  # obs-fold
    return head + content


class _Recorder(Resource):
    """Records what twisted.web was handed of each request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes, dict[bytes, list[bytes]], bytes]] = []

    def render(self, request):
        fields = {
            name.lower(): values
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.seen.append((request.method, request.uri, fields, request.content.read()))
        return b""


def _ersid(data: bytes) -> tuple[str, object]:
    """What Ersid makes of C{data}: ("request", ...), ("refused", message) or ("waiting", None)."""
    site = makeSite(Service(DictStorage()), reactor=Clock())
    recorder = site.resource = _Recorder()
    connection = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(data)
    sent = transport.value()
    connection.connectionLost(None)
    if recorder.seen:
        return "request", recorder.seen[0]
    if sent:
        return "refused", sent
    return "waiting", None


def _h11(data: bytes) -> tuple[str, object]:
    """What h11 makes of C{data}, in the same terms."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    request = None
    body = b""
    try:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                return "waiting", None
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    except h11.RemoteProtocolError as e:
        return "refused", str(e)
    fields: dict[bytes, list[bytes]] = {}
    for name, value in request.headers:
        fields.setdefault(name, []).append(value)
    return "request", (request.method, request.target, fields, body)


class DifferentialTests(TestCase):
    @settings(
        max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(requests())
    def test_ersid_and_h11_read_requests_alike(self, data: bytes) -> None:
        ours, theirs = _ersid(data), _h11(data)
        if ours[0] == "refused" and theirs[0] != "refused":
            status = int(ours[1].split(b" ", 2)[1])
            message = refusal(self, ours[1], status)["message"]
            if status == 405:
                # Methods llhttp does not know (any token is one to h11).
                self.assertNotIn(
                    data.split(b" ", 1)[0],
                    (b"GET", b"PUT", b"POST", b"DELETE", b"HEAD"),
                )
                return
            if re.search(rb"(?<!\r)\n", data.partition(b"\r\n\r\n")[0]):
                # Bare LF line ends, which h11 accepts (RFC 9112 lets a
                # recipient) and llhttp does not.
                self.assertTrue(message.startswith("the request is not valid"), message)
                return
            self.assertIn(message, STRICTER, data)
            return
        if ours[0] == "refused":
            self.assertGreaterEqual(int(ours[1].split(b" ", 2)[1]), 400)
        self.assertEqual(ours[0], theirs[0], (data, ours, theirs))
        if ours[0] == "request":
            self.assertEqual(_normal(ours[1]), _normal(theirs[1]), data)


def _normal(request: tuple) -> tuple:
    """A request read, with the values h11 lower-cases lower-cased."""
    method, target, fields, body = request
    fields = {
        name: [v.lower() for v in values] if name in _LOWERED else values
        for name, values in fields.items()
    }
    return method, target, fields, body


_LOWERED = {b"transfer-encoding", b"connection", b"expect"}
