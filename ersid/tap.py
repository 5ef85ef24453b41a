"""
C{twistd ersid}: the command-line options and the composition of the daemon.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet import endpoints, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from twisted.python import usage

from ersid import manhole, rest, site
from ersid._records import PackedRecords
from ersid.journal import FSYNC_POLICIES, Journal, JournalCorrupt, read_journal
from ersid.memory import DictStorage
from ersid.snapshot import (
    SnapshotError,
    SnapshotService,
    Snapshotter,
    load_snapshot,
    remove_stale_temporaries,
)
from ersid.storage import IStorage, Record

__all__ = ["Options", "default_data_dir", "makeService"]

_log = Logger()


def default_data_dir() -> str:
    """
    Where Ersid keeps its files unless told otherwise: C{$ERSID_DATA_DIR},
    else C{$XDG_DATA_HOME/ersid}, else C{~/.local/share/ersid}.
    """
    if os.environ.get("ERSID_DATA_DIR"):
        return os.environ["ERSID_DATA_DIR"]
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(xdg, "ersid")


# Twisted listens with a backlog of 50, which drops connections arriving
# in bursts of more; the kernel caps this at net.core.somaxconn.
_BACKLOG = 1024


def _endpoint_description(value: str) -> str:
    """
    A plain port number means TCP on the loopback interface only, with a
    listen backlog for bursts of connections; anything else is a Twisted
    endpoint description, checked here.
    """
    if value.isascii() and value.isdigit():
        if not 0 <= int(value) <= 65535:
            raise usage.UsageError(f"port {value} is out of range")
        return f"tcp:{value}:interface=127.0.0.1:backlog={_BACKLOG}"
    try:
        endpoints.serverFromString(reactor, value)
    except (ValueError, KeyError, TypeError) as e:
        raise usage.UsageError(f"bad endpoint description {value!r}: {e}") from None
    return value


def _optional_endpoint_description(value: str) -> str | None:
    return None if value == "none" else _endpoint_description(value)


def _positive(kind: type) -> Any:
    def convert(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
        if number <= 0:
            raise ValueError(f"{value!r} must be greater than zero")
        return number

    convert.coerceDoc = "Must be greater than zero."  # type: ignore[attr-defined]
    return convert


class Options(usage.Options):
    """
    Options of C{twistd ersid}; ports take a number (TCP on 127.0.0.1) or
    an endpoint description such as C{tcp:8080:interface=0.0.0.0}.
    """

    optParameters = [
        ["rest-port", "p", "8080", "Port or endpoint of the REST API."],
        [
            "manhole-port",
            "m",
            "8022",
            "Port or endpoint of the SSH manhole, or 'none' to turn it off.",
        ],
        [
            "manhole-authorized-keys",
            None,
            os.path.expanduser("~/.ssh/authorized_keys"),
            "OpenSSH authorized_keys file of the operators allowed in.",
        ],
        [
            "manhole-passwd",
            None,
            None,
            "File of 'user:hash' lines (bcrypt or crypt hashes, mode 0600) "
            "also allowed in.",
        ],
        [
            "dump-interval",
            "i",
            10,
            "Seconds between snapshots of the store.",
            _positive(float),
        ],
        [
            "dump-file",
            "f",
            None,
            "Snapshot file, loaded at startup. [default: DATA_DIR/snapshot.json]",
        ],
        [
            "data-dir",
            "d",
            default_data_dir(),
            "Directory for Ersid's own files, created mode 0700. "
            "($ERSID_DATA_DIR overrides the default.)",
        ],
        ["storage", "s", "dict", "Storage backend: dict or mysql."],
        [
            "fsync",
            None,
            "everysec",
            "When the dict backend's journal is flushed to disk: always (before "
            "each write is acknowledged), everysec, or no (when the OS likes).",
        ],
        [
            "mysql-url",
            None,
            None,
            "With --storage mysql: mysql://USER@HOST[:PORT]/DATABASE"
            "[?unix_socket=PATH], without the password.",
        ],
        [
            "mysql-password-file",
            None,
            None,
            "File (mode 0600) holding the MySQL password; else "
            "$ERSID_MYSQL_PASSWORD is used.",
        ],
        ["mysql-pool-min", None, 3, "Fewest MySQL connections kept.", _positive(int)],
        ["mysql-pool-max", None, 10, "Most MySQL connections open.", _positive(int)],
        [
            "access-log",
            None,
            None,
            "Log every request in the combined format to this file ('-': the "
            "daemon's log). [default: off]",
        ],
        [
            "max-value-size",
            None,
            rest.DEFAULT_MAX_VALUE_SIZE,
            "Largest value accepted, in bytes; larger writes get 413.",
            _positive(int),
        ],
    ]

    def postOptions(self) -> None:
        self["rest-port"] = _endpoint_description(self["rest-port"])
        self["manhole-port"] = _optional_endpoint_description(self["manhole-port"])
        if self["storage"] not in _BACKENDS:
            known = ", ".join(sorted(_BACKENDS))
            raise usage.UsageError(
                f"unknown storage {self['storage']!r}; choose one of: {known}"
            )
        if self["fsync"] not in FSYNC_POLICIES:
            raise usage.UsageError(
                f"--fsync must be one of {', '.join(FSYNC_POLICIES)}, not {self['fsync']!r}"
            )
        if self["storage"] == "mysql" and not self["mysql-url"]:
            raise usage.UsageError("--storage mysql needs --mysql-url")
        if self["dump-file"] is None:
            self["dump-file"] = os.path.join(self["data-dir"], "snapshot.json")


class _StartupError(Exception):
    """The daemon cannot start as configured; the message says why."""


@attrs.frozen
class _Opened:
    """A storage backend ready to serve, and how it is persisted."""

    storage: IStorage
    written_revision: int | None = None
    journal: Journal | None = None
    fork_with: Callable[[], Iterable[tuple[str, Record]]] | None = None


def _open_dict_storage(options: Options) -> _Opened:
    """
    Load the snapshot, if there is one, replay the journal entries newer
    than it, and keep journaling into a L{DictStorage}.
    """
    path = options["dump-file"]
    started = time.monotonic()
    loaded = load_snapshot(path)
    records, revision = loaded if loaded is not None else (PackedRecords(), 0)
    _log.info(
        "Loaded {count} keys at revision {revision} from {path} in {seconds:.2f} s",
        count=len(records),
        revision=revision,
        path=path if loaded is not None else f"{path} (absent: starting empty)",
        seconds=time.monotonic() - started,
    )
    replayed = 0
    for entry in read_journal(options["data-dir"], after=revision):
        if entry.record is None:
            records.pop(entry.key, None)
        else:
            records[entry.key] = entry.record
        revision = entry.revision
        replayed += 1
    if replayed:
        _log.info(
            "Replayed {count} journal entries, up to revision {revision}",
            count=replayed,
            revision=revision,
        )
    journal = Journal(options["data-dir"], revision, options["fsync"], reactor)
    storage = DictStorage(records, revision, journal)
    written = loaded[1] if loaded is not None else None
    return _Opened(storage, written, journal, fork_with=storage.records)


def _open_mysql_storage(options: Options) -> _Opened:
    """
    Connect to the database and check its schema; a server that cannot be
    reached yet is not fatal (requests get 503 until it can), a missing
    schema or refused credentials are.
    """
    try:
        import MySQLdb

        from ersid import mysql
    except ImportError:
        raise _StartupError(
            "--storage mysql needs mysqlclient: pip install 'ersid[mysql]' "
            "(which needs: apt-get install libmariadb-dev pkg-config)"
        ) from None
    if options["mysql-password-file"]:
        password = mysql.read_password_file(options["mysql-password-file"])
    else:
        password = os.environ.get("ERSID_MYSQL_PASSWORD", "")
    settings = mysql.MySQLSettings.from_url(options["mysql-url"], password)
    try:
        mysql.check_schema(settings)
    except mysql.SchemaError as e:
        raise _StartupError(str(e)) from None
    except MySQLdb.OperationalError as e:
        code, message = e.args[0], e.args[-1]
        if code not in (2002, 2003, 2005, 2006, 2013):
            raise _StartupError(f"database {settings.describe()}: {message}") from None
        _log.warn(
            "Database {database} unreachable ({message}); serving 503 until it is",
            database=settings.describe(),
            message=message,
        )
    else:
        _log.info("Using database {database}", database=settings.describe())
    storage = mysql.MySQLStorage(
        settings, options["mysql-pool-min"], options["mysql-pool-max"]
    )
    return _Opened(storage)


_BACKENDS = {"dict": _open_dict_storage, "mysql": _open_mysql_storage}


def _prepare_data_dir(options: Options) -> None:
    os.makedirs(options["data-dir"], mode=0o700, exist_ok=True)
    dump_directory = os.path.dirname(os.path.abspath(options["dump-file"]))
    os.makedirs(dump_directory, mode=0o700, exist_ok=True)
    remove_stale_temporaries(options["dump-file"])


class _Listener(StreamServerEndpointService):
    """
    Listen on an endpoint description, log where, and turn a port that
    cannot be had into a clean exit rather than a traceback.
    """

    def __init__(self, what: str, description: str, factory: IProtocolFactory):
        super().__init__(endpoints.serverFromString(reactor, description), factory)
        self.what = what
        self.description = description
        self.address: Any = None
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise SystemExit(
                f"ersid: cannot listen for the {self.what} on "
                f"{self.description}: {e.socketError}"
            ) from None
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        self.address = port.getHost()
        _log.info(
            "{what} listening on {address}", what=self.what, address=port.getHost()
        )
        return port


def _manhole_factory(options: Options, namespace: dict[str, Any]) -> Any:
    """
    The manhole's SSH factory, or C{None} (saying why) when it is turned
    off or nobody could log in.
    """
    if options["manhole-port"] is None:
        return None
    authorized = manhole.read_authorized_keys(options["manhole-authorized-keys"])
    passwords = {}
    if options["manhole-passwd"]:
        passwords = manhole.read_password_file(options["manhole-passwd"])
    if not authorized and not passwords:
        _log.warn(
            "SSH manhole off: no keys in {keys} and no --manhole-passwd; add an "
            "operator's public key there, or pass --manhole-authorized-keys "
            "or --manhole-passwd, to turn it on",
            keys=options["manhole-authorized-keys"],
        )
        return None
    host_key = manhole.load_or_create_host_key(options["data-dir"])
    _log.info(
        "SSH manhole host key fingerprint: {fingerprint}",
        fingerprint=manhole.fingerprint(host_key),
    )
    return manhole.makeFactory(namespace, host_key, authorized, passwords)


def _health(snapshotter: Snapshotter) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "snapshot": snapshotter.last.as_json() if snapshotter.last else None
    }
    if snapshotter.journal is not None:
        journal = snapshotter.journal
        facts["journal"] = {"fsync": journal.fsync, "error": journal.error}
    return facts


def makeService(options: Options) -> IService:
    """
    Compose the daemon: the storage, loaded from its snapshot; the REST API;
    the SSH manhole; the periodic snapshots.
    """
    # A store of millions of objects loads twice as fast without the cyclic
    # garbage collector reacting to every allocation; and as it lives as
    # long as the daemon, it is then frozen out of the collector's walks,
    # which would otherwise stall the reactor for a tenth of a second.
    gc.disable()
    try:
        _prepare_data_dir(options)
        opened = _BACKENDS[options["storage"]](options)
    except (OSError, ValueError, SnapshotError, JournalCorrupt, _StartupError) as e:
        sys.exit(f"ersid: {e}")
    finally:
        gc.enable()
    gc.collect()
    gc.freeze()
    storage = opened.storage
    snapshotter = Snapshotter(
        storage,
        options["dump-file"],
        reactor,
        opened.written_revision,
        opened.journal,
        fork_with=opened.fork_with,
    )
    api = rest.Service(
        storage, options["max-value-size"], health=lambda: _health(snapshotter)
    )

    daemon = MultiService()
    _Listener(
        "REST API", options["rest-port"], site.makeSite(api, options["access-log"])
    ).setServiceParent(daemon)
    namespace = {"service": api, "storage": storage, "reactor": reactor}
    try:
        ssh = _manhole_factory(options, namespace)
    except (OSError, manhole.ManholeError) as e:
        sys.exit(f"ersid: {e}")
    if ssh is not None:
        _Listener("SSH manhole", options["manhole-port"], ssh).setServiceParent(daemon)
    SnapshotService(options["dump-interval"], snapshotter).setServiceParent(daemon)
    return daemon
