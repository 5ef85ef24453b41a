"""
Access control: tokens from a file (L{ersid.auth.token_file}), each with
read or write permissions per key prefix (L{ersid.auth.grants}), checked
for every request by the API's L{IAccess} (L{ersid.auth.access}).
"""

from ersid.auth.access import (
    IAccess,
    OpenAccess,
    RememberedGrant,
    TokenAccess,
    TokenReloading,
)
from ersid.auth.grants import ANYONE, Grant, NotAuthenticated, NotPermitted
from ersid.auth.token_file import (
    TokenEntry,
    TokenFileError,
    add_token,
    read_token_file,
    remove_token,
)

__all__ = [
    "ANYONE",
    "Grant",
    "IAccess",
    "NotAuthenticated",
    "NotPermitted",
    "OpenAccess",
    "RememberedGrant",
    "TokenAccess",
    "TokenEntry",
    "TokenFileError",
    "TokenReloading",
    "add_token",
    "read_token_file",
    "remove_token",
]
