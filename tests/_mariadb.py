"""
MariaDB servers for the tests (see L{ersid.testing.mariadb}): one shared
by a whole run, or one of a test's own; and likewise three-node Galera
clusters (L{ersid.testing.galera}).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from ersid.testing.galera import PROVIDER, GaleraCluster
from ersid.testing.mariadb import MariaDB

from ._helpers import require

INSTALL_HINT = (
    "needs a MariaDB server: apt-get install mariadb-server libmariadb-dev "
    "pkg-config (bin/dev test does this as root)"
)

GALERA_HINT = (
    "needs MariaDB Galera: apt-get install mariadb-server galera-4 rsync "
    "(bin/dev test does this as root)"
)

_shared: MariaDB | None = None
_shared_cluster: GaleraCluster | None = None


def _require_mariadb() -> None:
    require(
        bool(shutil.which("mariadbd") and shutil.which("mariadb-install-db")),
        INSTALL_HINT,
    )


def shared_server() -> MariaDB:
    """
    The MariaDB server shared by the tests of one run, started on first use;
    the test calling this fails, saying what to install, without one.
    """
    global _shared
    _require_mariadb()
    if _shared is None:
        root = tempfile.mkdtemp(prefix="ersid-mariadb-")
        _shared = MariaDB(root)
        atexit.register(_shared.stop)
        atexit.register(shutil.rmtree, root, True)
    return _shared


def private_server(test) -> MariaDB:
    """A MariaDB server of the calling test's own, stopped after it."""
    _require_mariadb()
    # Not under _trial_temp: socket paths must stay under 108 bytes.
    root = tempfile.mkdtemp(prefix="ersid-mariadb-")
    test.addCleanup(shutil.rmtree, root, True)
    server = MariaDB(root)
    test.addCleanup(server.kill)
    return server


def _require_galera() -> None:
    _require_mariadb()
    require(os.path.exists(PROVIDER) and bool(shutil.which("rsync")), GALERA_HINT)


def shared_cluster() -> GaleraCluster:
    """The Galera cluster shared by the tests of one run, started on first use."""
    global _shared_cluster
    _require_galera()
    if _shared_cluster is None:
        root = tempfile.mkdtemp(prefix="ersid-galera-")
        _shared_cluster = GaleraCluster(root)
        atexit.register(shutil.rmtree, root, True)
        atexit.register(_shared_cluster.stop)
    return _shared_cluster


def private_cluster(test) -> GaleraCluster:
    """A Galera cluster of the calling test's own, for faults, stopped after it."""
    _require_galera()
    root = tempfile.mkdtemp(prefix="ersid-galera-")
    test.addCleanup(shutil.rmtree, root, True)
    cluster = GaleraCluster(root)
    test.addCleanup(cluster.stop)
    return cluster


def storage_for(test, settings, **kw):
    """A L{MySQLStorage} of C{settings}, disconnected after C{test}."""
    from ersid.mysql.storage import MySQLStorage

    storage = MySQLStorage(settings, min_connections=1, **kw)
    test.addCleanup(storage.disconnect)
    return storage
