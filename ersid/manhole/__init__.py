"""
The SSH manhole: a colored Python prompt inside the running daemon, for
operators who hold an authorized SSH key or a hashed password.

| module | what it holds |
| --- | --- |
| C{credentials} | the host key, authorized keys, password hashes and their checkers |
| C{server} | the Conch factory, sessions and the audit log of logins |
"""

from __future__ import annotations

from typing import Any

from twisted.conch.manhole_ssh import ConchFactory
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ersid.manhole.credentials import (
    ManholeError,
    fingerprint,
    load_or_create_host_key,
    read_authorized_keys,
    read_password_file,
)
from ersid.manhole.server import makeFactory
from ersid.startup import StartupError

__all__ = ["manhole_factory"]

_log = Logger()


def manhole_factory(
    namespace: dict[str, Any],
    data_dir: str,
    authorized_keys: str,
    password_file: str | None,
    clock: IReactorTime,
) -> ConchFactory | None:
    """
    The manhole's SSH factory over C{namespace}, letting in the keys in
    C{authorized_keys} and the users of C{password_file}; or C{None},
    saying why in the log, when nobody could log in.

    @raise StartupError: if a file it needs is unusable or exposed.
    """
    try:
        authorized = read_authorized_keys(authorized_keys)
        passwords = read_password_file(password_file) if password_file else {}
        if not authorized and not passwords:
            _log.warn(
                "SSH manhole off: no keys in {keys} and no --manhole-passwd; add "
                "an operator's public key there, or pass --manhole-authorized-keys "
                "or --manhole-passwd, to turn it on",
                keys=authorized_keys,
            )
            return None
        host_key = load_or_create_host_key(data_dir)
    except (OSError, ManholeError) as e:
        raise StartupError(str(e)) from None
    _log.info(
        "SSH manhole host key fingerprint: {fingerprint}",
        fingerprint=fingerprint(host_key),
    )
    return makeFactory(namespace, host_key, authorized, passwords, clock)
