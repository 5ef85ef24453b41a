"""
Ersid: a durable HTTP key-value store built on Twisted.

The package's parts are folders: C{ersid.web} (the HTTP API),
C{ersid.embedded} and C{ersid.mysql} (the storage backends),
C{ersid.snapshots}, C{ersid.manhole} and C{ersid.client}; C{ersid.tap}
composes the daemon. Importing C{ersid} loads none of them.

C{__version__} is Ersid's version, said once: setup.py reads it from this
file without importing the package, C{ersid --version} and C{twistd ersid
--version} from the package.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
