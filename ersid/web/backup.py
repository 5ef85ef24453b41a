"""
C{GET /_snapshot}: an online backup for an admin, the store at one
revision in the format of the snapshot file the daemon loads at startup,
streamed as fast as the client reads and no faster.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ersid.auth import Grant, NotPermitted
from ersid.snapshots.streaming import BackupFailed, IBackups
from ersid.storage import StorageUnavailable
from ersid.web.errors import ApiError

__all__ = ["MOST_BACKUPS", "SnapshotRoute"]

# Backups streamed at once, at most: each holds a forked process or a
# database connection, and a thread, for as long as its client reads.
MOST_BACKUPS = 2

_log = Logger()


class SnapshotRoute:
    """Streams the backups of C{backups}, at most L{MOST_BACKUPS} at once."""

    def __init__(self, backups: IBackups | None) -> None:
        self._backups = backups
        self._streaming = 0

    async def serve(self, request: IRequest, grant: Grant) -> bytes:
        """
        Stream a snapshot to C{request}, whose token's C{grant} must be an
        admin's. A snapshot that fails midway cuts the connection: the
        client, missing the end of the document, cannot take a part for
        the whole.
        """
        if not grant.admin:
            raise NotPermitted(
                f"token {grant.name!r} may not take backups: that needs an admin token"
            )
        if self._backups is None:
            raise ApiError(404, "not_found", "this server takes no backups")
        if self._streaming >= MOST_BACKUPS:
            raise ApiError(
                503,
                "busy",
                f"{self._streaming} backups are being taken already; try again later",
                {b"Retry-After": b"10"},
            )
        self._streaming += 1
        try:
            return await self._stream(self._backups, request)
        finally:
            self._streaming -= 1

    async def _stream(self, backups: IBackups, request: IRequest) -> bytes:
        stream = await backups.open()
        revision = stream.revision
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(
            b"Content-Disposition",
            b'attachment; filename="ersid-snapshot-%d.json"' % (revision,),
        )
        request.setHeader(b"Ersid-Revision", b"%d" % (revision,))
        request.setHeader(b"Cache-Control", b"no-store")
        sent = 0

        def write(data: bytes) -> None:
            nonlocal sent
            sent += len(data)
            request.write(data)

        request.registerProducer(stream, True)
        try:
            await stream.start(write)
        except CancelledError:
            _log.info(
                "Backup at revision {revision} abandoned: its client went away "
                "after {sent} bytes",
                revision=revision,
                sent=sent,
            )
            raise
        except BackupFailed as e:
            _log.error(
                "Backup at revision {revision} failed after {sent} bytes: {why}",
                revision=revision,
                sent=sent,
                why=str(e),
            )
            if not sent:
                request.unregisterProducer()
                raise StorageUnavailable(f"the backup failed: {e}") from None
            request.transport.abortConnection()
            # Klein cancels this once the connection is lost.
            await request.notifyFinish()
        request.unregisterProducer()
        _log.info(
            "Backup at revision {revision} sent: {sent} bytes",
            revision=revision,
            sent=sent,
        )
        return b""
