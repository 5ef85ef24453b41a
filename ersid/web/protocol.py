"""
An HTTP/1.1 connection to the API, parsed by llhttp (Node.js's parser,
through C{httptools}): key requests are answered straight from their
storage call, the response written as bytes in one piece; everything else
goes to twisted.web and Klein (L{ersid.web.slowpath}).

Beyond parsing, a connection is where a public server's limits live: one
reading of every request (what a proxy in front could read another way is
refused), deadlines for a request's head and body and for silence, no more
answers than the client reads, and JSON for every error.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from ersid.auth import NotAuthenticated, RememberedGrant
from ersid.web import slowpath
from ersid.web.errors import ApiError, access_refused, empty
from ersid.web.exchange import Fields, Head, KeyRequest, refusal
from ersid.web.keys import KeyRoute
from ersid.web.reading import (
    ALLOW_ANY,
    MAX_FIELDS,
    MAX_HEAD_BYTES,
    MAX_TARGET_BYTES,
    VERSIONS,
    ambiguity,
    fields_too_large,
    path_of_absolute_form,
    refused_by_llhttp,
    says_close,
    target_too_long,
)
from ersid.web.sending import writer
from ersid.web.traffic import FASTEST, SUM, bucket

if TYPE_CHECKING:
    from ersid.web.site import ApiSite

__all__ = ["MOST_WAITING", "Connection"]

# Pipelined requests read ahead of the one being answered, at most.
MOST_WAITING = 16
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_log = Logger()


class _Stop(Exception):
    """Raised in a parser callback: read nothing more of this connection."""


@implementer(IHalfCloseableProtocol, IPushProducer)
class Connection(Protocol):
    """
    One client connection. Requests are read by llhttp, and answered one
    at a time in the order they came (pipelined ones wait in C{_waiting});
    then it:

      - refuses in JSON, and closes, what llhttp accepts but a proxy in
        front might read differently (see L{ersid.web.reading.ambiguity}), and what it
        refuses itself;
      - gives a request's line and headers C{head_timeout} seconds to
        arrive, its body C{body_timeout} seconds from the end of its
        headers, and drops a connection silent for C{idle_timeout}
        seconds: with one timer per connection, not one per request;
      - stops reading, and answering, while the client leaves responses
        unread; drops it when a request of its has waited so
        C{send_timeout} seconds, or when too many clients do so at once;
      - counts itself in the site's connection budget, which closes it when
        short of descriptors if it is idle;
      - answers a client that closes its side after its requests (as
        C{printf ... | nc} does) before closing its own.
    """

    peer: IAddress
    host: IAddress
    stream_producer: IPushProducer | None = None
    # Whether the request being answered streams (a watch): its duration
    # is how long the client watched, not how fast it was answered.
    streamed = False

    _now = 0.0
    _version = "1.1"
    _host: bytes | None = None
    _head_since: float | None = None
    _body_since: float | None = None
    _idle_since: float | None = None
    _head_size = 0
    _field_count = 0
    _body_size = 0
    _chunk_empty = False
    _waiting_bytes = 0
    _paused_at: float | None = None
    _abort_timer: IDelayedCall | None = None
    _reading_done = False
    _backed_up = False
    _reading_paused = False
    _looping = False
    _continue_owed = False
    _closed = False
    _answering: object | None = None
    _timer: IDelayedCall | None = None
    _send_timer: IDelayedCall | None = None
    _started = 0.0
    _refused_method = b"other"
    # Bytes read so far, and where the head or trailer being read began:
    # llhttp buffers a head without bound, and says nothing until it ends.
    received = 0
    _head_start = 0
    _trailer_start = 0

    def __init__(self, factory: ApiSite) -> None:
        self.factory = factory
        self._clock = factory.reactor
        self._service = factory.service
        self._max_body = factory.service.max_value_size
        self._date = factory.date_header
        self._logging = factory.logging
        self._traffic = factory.traffic
        self._started = 0.0
        self._parser = HttpRequestParser(self)
        self._grant = RememberedGrant(factory.service.access).grant
        self._waiting: deque[Head | ApiError] = deque()
        self._target = b""
        self._fields = Fields()
        self._body = bytearray()

    # The connection.

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            # A response twisted.web writes in pieces (head, then body)
            # would otherwise wait for the client's delayed ACK, 40 ms, on
            # a kept-alive connection: Nagle's algorithm holds the body.
            self.transport.setTcpNoDelay(True)
        self._write = writer(self.transport)
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()
        self.transport.registerProducer(self, True)
        if self._traffic is not None:  # first: the budget may close it at once
            self._traffic.opened(self)
        if self.factory.budget is not None:
            self.factory.budget.opened(self)
        self._idle_since = self._clock.seconds()
        self._arm(min(self.factory.idle_timeout, self._shortest_deadline()))

    def dataReceived(self, data: bytes) -> None:
        if self._reading_done:
            return
        self._now = self._clock.seconds()
        self.received += len(data)
        try:
            self._parser.feed_data(data)
        except HttpParserCallbackError:
            if not self._reading_done:  # a bug, not a refusal
                _log.failure("Parsing a request from {peer}", peer=str(self.peer))
                self._refuse(ApiError(500, "internal", "internal error"))
        except HttpParserUpgrade:
            # At CONNECT or Upgrade llhttp stops: neither is offered, so the
            # request was answered as any other, with Connection: close.
            self._reading_done = True
        except HttpParserError as e:
            self._refuse(refused_by_llhttp(e, self._max_body))
        else:
            if (
                self._head_since is not None
                and self.received - self._head_start > MAX_HEAD_BYTES
            ) or (
                self._chunk_empty
                and self.received - self._trailer_start > MAX_HEAD_BYTES
            ):
                self._refuse(fields_too_large())
        self._answer_waiting()
        self._read_or_not()

    def readConnectionLost(self) -> None:
        """
        The client sent all it will: answer what it asked, then close; but a
        stream, which has no end, ends now: its client has gone.
        """
        if self.stream_producer is not None:
            self._close()
            return
        self._reading_done = True
        self._now = self._clock.seconds()
        self._answer_waiting()

    def writeConnectionLost(self) -> None:
        """Nothing more can be sent: a half-closed client gets nothing."""
        self._close()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
        for timer in (self._timer, self._send_timer, self._abort_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._send_timer = self._abort_timer = None
        # The parser holds this connection's methods: without this, the two
        # (and the transport, its unsent bytes, a partial body) would wait
        # for the garbage collector's full pass.
        self._parser = None
        self._body = bytearray()
        self._waiting.clear()
        answering, self._answering = self._answering, None
        if self._traffic is not None:
            self._traffic.closed(self)
        if isinstance(answering, Request):
            if answering.startedWriting:  # a stream, answered all along
                self._count_slow(answering)
            answering.connectionLost(reason)
        self.factory.unread.pop(self, None)
        if self.factory.budget is not None:
            self.factory.budget.closed(self)

    def _close(self) -> None:
        """
        Close once what was written is sent; abort if the client does not
        read it within C{abort_timeout} seconds.
        """
        if self._abort_timer is not None or self._closed:
            return
        # Unregistered, or the transport would wait for its producer to
        # resume instead of closing (twisted.web's channel does the same).
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        if not self._closed:
            timeout = self.factory.abort_timeout
            self._abort_timer = self._clock.callLater(timeout, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        self.transport.abortConnection()

    # llhttp's callbacks, in the order it makes them.

    def on_message_begin(self) -> None:
        self._head_since = self._now
        self._idle_since = None
        self._target = b""
        self._fields = Fields()
        self._body = bytearray()
        self._head_start = self.received
        self._head_size = self._field_count = 0

    def on_url(self, part: bytes) -> None:
        self._target += part
        self._head_size += len(part)
        if self._head_size > MAX_TARGET_BYTES:
            self._stop(target_too_long())

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_since is None:
            return  # a trailer field, after a chunked body: not kept
        self._field_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._field_count > MAX_FIELDS or self._head_size > MAX_HEAD_BYTES:
            self._stop(fields_too_large())
        name = name.lower()
        value = value.rstrip(b" \t")
        lines = self._fields.get(name)
        if lines is None:
            self._fields[name] = [value]
        else:
            lines.append(value)

    def on_headers_complete(self) -> None:
        self._head_since = None
        self._body_since = self._now
        fields = self._fields
        self._version = version = self._parser.get_http_version()
        hosts = fields.get(b"host")
        # Most requests of a keep-alive connection have the Host header of
        # the one before, which passed, and none of the other headers that
        # ambiguity() checks: nothing to check again.
        if (
            hosts != [self._host]
            or version != "1.1"
            or b"transfer-encoding" in fields
            or b"content-type" in fields
        ):
            error = ambiguity(version, fields)
            if error is not None:
                self._stop(error)
            if hosts is not None:
                self._host = hosts[0]
        length = fields.get(b"content-length")
        has_body = b"transfer-encoding" in fields
        if length is not None:
            # llhttp checked it is digits; Python reads no number of over
            # 4,300 of them, and one of over 19 is larger than any body.
            digits = length[0].lstrip(b"0")
            if len(digits) > 19 or int(digits or b"0") > self._max_body:
                self._stop(ApiError.value_too_large(self._max_body))
            has_body = has_body or digits != b""
        if has_body:
            # A body is read only for a client the server knows: strangers
            # would have it hold up to a value's worth a connection.
            try:
                self._grant(fields.get(b"authorization"))
            except NotAuthenticated as e:
                self._stop(access_refused(e))
        expect = fields.get(b"expect")
        if expect is not None and expect[-1].lower() == b"100-continue":
            self._continue_owed = version == "1.1"

    def on_body(self, data: bytes) -> None:
        self._chunk_empty = False
        self._body_size += len(data)
        if self._body_size > self._max_body:
            self._stop(ApiError.value_too_large(self._max_body))
        self._body += data

    def on_chunk_header(self) -> None:
        # Until a byte of it comes, this may be the last chunk, after which
        # llhttp buffers trailer fields: they are counted as they come.
        self._chunk_empty = True
        self._trailer_start = self.received

    def on_chunk_complete(self) -> None:
        self._chunk_empty = False

    def on_message_complete(self) -> None:
        self._continue_owed = False
        self._body_size = 0
        self._body_since = None
        version = self._version
        fields = self._fields
        keep_alive = (
            version == "1.1"
            and (b"connection" not in fields or not says_close(fields))
            and not self._parser.should_upgrade()
        )
        head = Head(
            self._parser.get_method(),
            self._target,
            VERSIONS[version],
            fields,
            bytes(self._body),
            keep_alive,
        )
        if not keep_alive:
            self._wait(head)
            self._reading_done = True
            raise _Stop()
        if self._waiting or self._answering is not None or self._backed_up:
            self._wait(head)
            return
        try:
            self._answer(head)  # the usual case, without the queue
        except Exception:
            # Not in llhttp's hands, which would take it for a parsing error
            # and have a second response sent: what was sent is all there is.
            _log.failure("Answering {peer}", peer=str(self.peer))
            self._reading_done = True
            self._answering = None
            self.transport.abortConnection()
            raise _Stop() from None

    # Answers, one at a time, in order.

    def _answer_waiting(self) -> None:
        """
        Answer the requests waiting, in order, as long as the client reads
        the answers; then close the connection if nothing more is to come,
        or note that it is idle.
        """
        if self._looping or self._closed:
            return
        waiting = self._waiting
        self._looping = True
        try:
            while waiting and self._answering is None and not self._backed_up:
                item = waiting.popleft()
                if isinstance(item, Head):
                    self._waiting_bytes -= len(item.body)
                if isinstance(item, ApiError):
                    self._write_refusal(item)
                    return
                self._answer(item)
        finally:
            self._looping = False
        if self._reading_paused:
            self._read_or_not()
        if self._answering is not None:
            return
        if waiting:
            if self._send_timer is None:
                timeout = self.factory.send_timeout
                self._send_timer = self._clock.callLater(timeout, self._not_reading)
        elif self._reading_done:
            self._close()
        elif self._head_since is None and self._body_since is None:  # between
            self._idle_since = self._now
        elif self._continue_owed:
            # Its earlier requests answered, this one may send its body.
            self._continue_owed = False
            self.transport.write(_CONTINUE)
            if self._traffic is not None:
                self._traffic.sent += len(_CONTINUE)

    def _answer(self, head: Head) -> None:
        self._started = self._now
        target = head.target
        if target[:1] == b"/":
            path = target.partition(b"?")[0]
        else:
            path = path_of_absolute_form(target)
            if path is None:
                self._answer_target(head)
                return
        service = self._service
        route = service.key_route(head.method, path)
        if route is None:
            self._answering = _RENDERING
            request = slowpath.render(self, head, path)
            if self._answering is _RENDERING:  # not finished yet
                self._answering = request
            return
        request = KeyRequest(head, path, self.peer)
        try:
            outcome = route.call(
                service, request, self._grant(head.fields.get(b"authorization"))
            )
        except Exception:
            outcome = Failure()
        if isinstance(outcome, Deferred):
            self._answering = request
            outcome.addBoth(self._respond, route, request, head.keep_alive)
        else:
            self._send(request, route.body(service, outcome, request), head.keep_alive)

    def _answer_target(self, head: Head) -> None:
        """
        Answer a request whose target is no path: C{*} to C{OPTIONS}, the
        one method it is meant for; a 400 to the rest. (Targets in absolute
        form, C{http://host/key}, are served as their path.)
        """
        request = KeyRequest(head, head.target, self.peer)
        if head.target == b"*" and head.method == b"OPTIONS":
            request.setHeader(b"Allow", ALLOW_ANY)
            body = empty(request, 200)
        else:
            message = "the request target must be a path, such as /key"
            body = ApiError(400, "bad_request_target", message).render(request)
        self._send(request, body, head.keep_alive)

    def _respond(
        self, outcome: Any, route: KeyRoute, request: KeyRequest, keep_alive: bool
    ) -> None:
        if self._answering is not request:
            return  # the connection was lost
        self._answering = None
        self._now = self._clock.seconds()
        self._send(request, route.body(self._service, outcome, request), keep_alive)
        self._answer_waiting()

    def _send(self, request: KeyRequest, body: bytes, keep_alive: bool) -> None:
        date = self._date
        response = request.response(body, date(), not keep_alive)
        self._write(response)
        traffic = self._traffic
        if traffic is not None:
            # Traffic.answered, written out: the call would cost as much.
            traffic.sent += len(response)
            seconds = date.now - self._started
            try:
                counts = traffic.answers[request.code][request.method]
            except KeyError:
                counts = traffic.tally(request.method, request.code)
            counts[0 if seconds <= FASTEST else bucket(seconds)] += 1
            counts[SUM] += seconds
        if self._logging:
            self.factory.log(request)

    def slow_done(self, request: Request) -> None:
        """A request rendered by twisted.web is answered."""
        if self._answering in (request, _RENDERING):
            self._count_slow(request)
            self.streamed = False
            self._answering = None
            self._now = self._clock.seconds()
            self._answer_waiting()

    def _count_slow(self, request: Request) -> None:
        """Count a request rendered by twisted.web, a stream without its duration."""
        if self._traffic is None:
            return
        if self.streamed:
            self._traffic.untimed(request.method, request.code)
        else:
            seconds = self._clock.seconds() - self._started
            self._traffic.answered(request.method, request.code, seconds)

    # Refusals: requests that cannot be answered, and end the connection.

    def _stop(self, error: ApiError) -> None:
        """In a parser callback: refuse the request being read."""
        self._refuse(error)
        raise _Stop()

    def _refuse(self, error: ApiError) -> None:
        """
        Answer C{error}, after the requests before it, and close: what
        follows a request that was refused is not a request.
        """
        self._reading_done = True
        self._continue_owed = False
        self._head_since = self._body_since = None
        self._waiting.append(error)
        if self._target:  # llhttp read the method before it
            self._refused_method = self._parser.get_method()

    def _write_refusal(self, error: ApiError) -> None:
        response = refusal(error, self.factory.date_header())
        self.transport.write(response)
        if self._traffic is not None:
            self._traffic.sent += len(response)
            self._traffic.untimed(self._refused_method, error.status)
        self._waiting.clear()
        self._waiting_bytes = 0
        self._close()

    # Time: deadlines for a request's head and body, and for silence.

    def _shortest_deadline(self) -> float:
        return min(self.factory.head_timeout, self.factory.body_timeout)

    def _arm(self, seconds: float) -> None:
        self._timer = self._clock.callLater(seconds, self._check_deadlines)

    def _check_deadlines(self) -> None:
        """
        Fired at least every head or body timeout, so that a head or a body
        that began is cut off on time, whenever it began.
        """
        self._timer = None
        now = self._clock.seconds()
        factory = self.factory
        deadlines = [now + self._shortest_deadline()]
        for since, seconds, what in [
            (self._head_since, factory.head_timeout, "request's headers"),
            (self._body_since, factory.body_timeout, "request body"),
        ]:
            if since is None or self._reading_paused:
                continue
            if since + seconds <= now:
                message = f"the {what} did not arrive within {seconds} seconds"
                self._refuse(ApiError(408, "request_timeout", message))
                self._answer_waiting()
                return
            deadlines.append(since + seconds)
        if self._idle_since is not None:
            if self._idle_since + factory.idle_timeout <= now:
                self._close()
                return
            deadlines.append(self._idle_since + factory.idle_timeout)
        self._arm(min(deadlines) - now)

    # Flow control: no more answers than the client reads.

    def _wait(self, head: Head) -> None:
        """Queue a request behind those being answered."""
        self._waiting.append(head)
        self._waiting_bytes += len(head.body)

    def _read_or_not(self) -> None:
        """
        Read from the client only while it reads its answers, and while the
        requests read ahead of the one answered are few and hold at most a
        value's worth of bodies: pipelined requests stay in the kernel, not
        in memory. While not reading, the deadlines of a request's head and
        body stand still: the wait is the daemon's, not the client's.
        """
        waiting = self._waiting
        busy = waiting or self._answering is not None
        if not (busy or self._backed_up or self._reading_paused):
            return  # the usual case: reading, and nothing to hold it back
        pause = self._backed_up or len(waiting) > MOST_WAITING
        if not pause and busy:
            pause = self._waiting_bytes + self._body_size > self._max_body
        if pause == self._reading_paused or self._closed:
            return
        self._reading_paused = pause
        now = self._clock.seconds()
        if pause:
            self._paused_at = now
            self.transport.pauseProducing()
            return
        if self._paused_at is not None:
            stood = now - self._paused_at
            if self._head_since is not None:
                self._head_since += stood
            if self._body_since is not None:
                self._body_since += stood
            self._paused_at = None
        if not self._reading_done:
            self.transport.resumeProducing()

    def pauseProducing(self) -> None:
        """
        The client is not reading: read nothing more from it, and answer
        nothing more, until it does.
        """
        self._backed_up = True
        self._read_or_not()
        if self._send_timer is None:
            # Reading stops, and with it the deadlines of a request coming
            # in: this one stands for them.
            timeout = self.factory.send_timeout
            self._send_timer = self._clock.callLater(timeout, self._not_reading)
        if self.stream_producer is not None:
            self.stream_producer.pauseProducing()
        if self.stream_producer is not None:
            return  # a stream bounds what it leaves unsent by itself
        # What clients leave unread is bounded all together, too: when too
        # many hold up to a value each, the one waiting longest is dropped.
        unread = self.factory.unread
        unread[self] = None
        if len(unread) > self.factory.most_unread:
            oldest = next(iter(unread))
            del unread[oldest]
            oldest.transport.abortConnection()

    def resumeProducing(self) -> None:
        self._backed_up = False
        self._now = self._clock.seconds()
        self.factory.unread.pop(self, None)
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._read_or_not()
        if self.stream_producer is not None:
            self.stream_producer.resumeProducing()
        self._answer_waiting()

    def stopProducing(self) -> None:
        """The connection is going: L{connectionLost} follows."""

    def _not_reading(self) -> None:
        self._send_timer = None
        _log.info(
            "Dropping {peer}: it left responses unread for {seconds} seconds",
            peer=str(self.peer),
            seconds=self.factory.send_timeout,
        )
        self.transport.abortConnection()

    def shed(self) -> bool:
        """
        Close the connection if no request of its is under way, or one whose
        head has taken over a second (a head comes in one packet), or if it
        leaves its answers unread: whether it did.
        """
        if self._backed_up or self._abort_timer is not None:
            # It has not read its answers for a while, or is closing and
            # has not read the last: a place and memory, held unused.
            self.transport.abortConnection()
            return True
        if self._answering is not None or self._waiting:
            return False
        if self._body_since is not None:
            return False  # uploading a body
        if self._head_since is not None:
            if self._clock.seconds() - self._head_since < 1:
                return False
        self._close()
        return True


# Rendering, by twisted.web, of a request that may finish at once.
_RENDERING = object()
