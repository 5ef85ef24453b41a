"""
Ersid: a durable HTTP key-value store built on Twisted.

The package's parts are folders: C{ersid.web} (the HTTP API),
C{ersid.embedded} and C{ersid.mysql} (the storage backends),
C{ersid.snapshots}, C{ersid.manhole} and C{ersid.client}; C{ersid.tap}
composes the daemon. Importing C{ersid} loads none of them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
