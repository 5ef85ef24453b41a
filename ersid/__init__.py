"""
Ersid: a durable HTTP key-value store built on Twisted.
"""

from ersid.memory import DictStorage
from ersid.rest import Service
from ersid.site import makeSite
from ersid.storage import (
    DEFAULT_CONTENT_TYPE,
    IImmediateReads,
    IStorage,
    Page,
    Precondition,
    PreconditionFailed,
    Record,
    StorageUnavailable,
    WriteResult,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "DictStorage",
    "IImmediateReads",
    "IStorage",
    "Page",
    "Precondition",
    "PreconditionFailed",
    "Record",
    "Service",
    "StorageUnavailable",
    "WriteResult",
    "makeSite",
]
