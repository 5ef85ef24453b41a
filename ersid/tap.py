"""
C{twistd ersid}: the daemon's options, and L{makeService}, which composes
it, and reads as its table of contents.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IService
from twisted.internet import reactor as _global_reactor
from twisted.internet.interfaces import IProtocolFactory
from twisted.python import usage

from ersid import __version__
from ersid.auth import IAccess, OpenAccess, TokenAccess, TokenReloading
from ersid.embedded import FSYNC_POLICIES, open_embedded
from ersid.expiry import DEFAULT_REAP_INTERVAL
from ersid.files import LockedServices, claim_files, default_data_dir
from ersid.listening import (
    ConnectionBudget,
    Listener,
    endpoint_description,
    optional_endpoint_description,
)
from ersid.manhole import manhole_factory
from ersid.metrics import Metrics
from ersid.mysql import DEFAULT_POLL_INTERVAL, open_mysql
from ersid.startup import one_line_exit
from ersid.storage import OpenedStorage
from ersid.tls import TLSFactory, server_tls
from ersid.watch import (
    DEFAULT_HISTORY_BYTES,
    DEFAULT_HISTORY_CHANGES,
    DEFAULT_LAG_BYTES,
    DEFAULT_MAX_WATCHERS,
    DEFAULT_PROGRESS_INTERVAL,
    History,
    Hub,
    WatchedStore,
)
from ersid.web import DEFAULT_MAX_VALUE_SIZE, Service, Traffic, makeSite

__all__ = ["Options", "makeService"]


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

    optFlags = [
        [
            "insecure-no-auth",
            None,
            "Serve without tokens on addresses other machines can reach: for a "
            "network you trust.",
        ],
        [
            "no-metrics",
            None,
            "Serve no /_metrics (it answers 404), and count no requests; the "
            "journal, snapshots and queries still count, at a batch's cost.",
        ],
    ]

    optParameters = [
        ["rest-port", "p", "8080", "Port or endpoint of the REST API."],
        [
            "tokens",
            None,
            None,
            "Token file (mode 0600; made by 'ersid token add'): every request "
            "then needs a token. Reloaded on SIGHUP.",
        ],
        [
            "tls-cert",
            None,
            None,
            "PEM file of the REST API's certificate (and its chain): HTTPS.",
        ],
        ["tls-key", None, None, "PEM file (mode 0600) of that certificate's key."],
        [
            "tls-client-ca",
            None,
            None,
            "PEM file of CAs: only clients with a certificate one of them "
            "signed may connect.",
        ],
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
            DEFAULT_MAX_VALUE_SIZE,
            "Largest value accepted, in bytes; larger writes get 413.",
            _positive(int),
        ],
        [
            "watch-history",
            None,
            DEFAULT_HISTORY_CHANGES,
            "Most changes kept for watchers to resume from (and kept in MySQL's "
            "change log).",
            _positive(int),
        ],
        [
            "watch-history-bytes",
            None,
            DEFAULT_HISTORY_BYTES,
            "Most bytes of keys and values those changes may take in memory.",
            _positive(int),
        ],
        [
            "watch-progress",
            None,
            DEFAULT_PROGRESS_INTERVAL,
            "Seconds of silence after which a watch stream is sent a progress event.",
            _positive(float),
        ],
        [
            "max-watchers",
            None,
            DEFAULT_MAX_WATCHERS,
            "Most watchers held at once; more get 503.",
            _positive(int),
        ],
        [
            "watch-lag-bytes",
            None,
            DEFAULT_LAG_BYTES,
            "Bytes of changes a watcher may fall behind its client's reading "
            "before it is ended with a compacted event.",
            _positive(int),
        ],
        [
            "watch-history-age",
            None,
            None,
            "With --storage mysql: also trim the change log to the changes of the "
            "last this many seconds. [default: by count only]",
            _positive(float),
        ],
        [
            "reap-interval",
            None,
            DEFAULT_REAP_INTERVAL,
            "Seconds a key may outlive its time to live before it is removed "
            "(it is never served once expired).",
            _positive(float),
        ],
        [
            "watch-poll",
            None,
            DEFAULT_POLL_INTERVAL,
            "With --storage mysql: seconds between two reads of the change log.",
            _positive(float),
        ],
    ]

    def opt_version(self) -> None:
        """Print Ersid's version and exit."""
        print(f"ersid {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse C{options}. A mistake in them ends the process with one line
        on standard error and exit status 1: twistd would print its whole
        usage on standard output, the mistake last, and exit 0. The usage
        stays at C{--help}.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"ersid: {e} (the options: twistd ersid --help)") from None

    def postOptions(self) -> None:
        self._check_access()
        self["rest-port"] = endpoint_description(self["rest-port"])
        self["manhole-port"] = optional_endpoint_description(self["manhole-port"])
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

    def _check_access(self) -> None:
        """Refuse tokens and TLS options that do not go together."""
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if self["tls-client-ca"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        if self["tls-cert"] and self["rest-port"].startswith("ssl:"):
            raise usage.UsageError(
                "--tls-cert adds TLS to --rest-port, which is ssl: already; "
                "give it as tcp:"
            )
        if self["tokens"] and self["insecure-no-auth"]:
            raise usage.UsageError("--insecure-no-auth makes no sense with --tokens")


@one_line_exit
def makeService(options: Options, reactor: Any = _global_reactor) -> IService:
    """
    Compose the daemon: the storage backend, opened from its files or its
    database, and the services that keep it; the hub its changes are
    published to, for watchers; who may do what (the tokens); what is
    counted for Prometheus; the REST API in front of it, over TLS if
    asked; the SSH manhole into it.
    """
    files = claim_files(options["data-dir"], options["dump-file"])
    options["dump-file"] = files.dump_file
    history = History(0, options["watch-history"], options["watch-history-bytes"])
    hub = Hub(
        history,
        reactor,
        options["watch-progress"],
        options["max-watchers"],
        options["watch-lag-bytes"],
    )
    daemon = LockedServices(files.locks)
    access = _access(options, reactor, daemon)
    opened = _BACKENDS[options["storage"]](options, hub, reactor)
    traffic = metrics = None
    if not options["no-metrics"]:
        traffic = Traffic()
        collectors = (traffic, *hub.collectors, *opened.collectors)
        metrics = Metrics(opened.storage, collectors)
    api = Service(
        opened.storage,
        options["max-value-size"],
        health=opened.health,
        hub=hub,
        access=access,
        metrics=metrics,
        backups=opened.backups,
    )
    budget = ConnectionBudget.of_this_process(reactor)
    site: IProtocolFactory = makeSite(
        api, options["access-log"], reactor=reactor, budget=budget, traffic=traffic
    )
    if options["tls-cert"]:
        tls = server_tls(
            options["tls-cert"], options["tls-key"], options["tls-client-ca"]
        )
        site = TLSFactory(tls, site)
    unguarded = None if not access.open or options["insecure-no-auth"] else _UNGUARDED
    rest = Listener("REST API", options["rest-port"], site, reactor, budget, unguarded)
    rest.setServiceParent(daemon)
    if options["manhole-port"] is not None:
        namespace = {
            "service": api,
            "storage": opened.storage,
            "hub": hub,
            "access": access,
            "reactor": reactor,
        }
        ssh = manhole_factory(
            namespace,
            options["data-dir"],
            options["manhole-authorized-keys"],
            options["manhole-passwd"],
            reactor,
        )
        if ssh is not None:
            counted = budget.counting(ssh)
            manhole = Listener(
                "SSH manhole", options["manhole-port"], counted, reactor, budget
            )
            manhole.setServiceParent(daemon)
    WatchedStore(opened.services, hub).setServiceParent(daemon)
    return daemon


# Why the REST API refuses to listen where others can reach it, without tokens.
_UNGUARDED = (
    "without tokens: give --tokens FILE (see 'ersid token add'), or "
    "--insecure-no-auth on a network you trust"
)


def _access(options: Options, reactor: Any, daemon: LockedServices) -> IAccess:
    """The tokens of C{--tokens}, reloaded on SIGHUP; else no tokens."""
    if not options["tokens"]:
        return OpenAccess()
    access = TokenAccess(options["tokens"])
    TokenReloading(access, reactor).setServiceParent(daemon)
    return access


def _open_embedded(options: Options, hub: Hub, reactor: Any) -> OpenedStorage:
    return open_embedded(
        options["data-dir"],
        options["dump-file"],
        options["fsync"],
        options["dump-interval"],
        hub,
        options["reap-interval"],
        reactor,
    )


def _open_mysql(options: Options, hub: Hub, reactor: Any) -> OpenedStorage:
    return open_mysql(
        options["mysql-url"],
        options["mysql-password-file"],
        (options["mysql-pool-min"], options["mysql-pool-max"]),
        options["dump-file"],
        options["dump-interval"],
        hub,
        options["watch-poll"],
        options["watch-history-age"],
        options["reap-interval"],
        reactor,
    )


# The backends C{--storage} names, and how each is opened.
_BACKENDS = {"dict": _open_embedded, "mysql": _open_mysql}
