"""
What a token may do: a L{Grant}, read or write access per key prefix, the
longest matching prefix deciding; and the errors of a request refused.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Protocol

from twisted.logger import Logger

__all__ = ["ANYONE", "Grant", "NotAuthenticated", "NotPermitted", "Revocable"]

_log = Logger()


class NotAuthenticated(Exception):
    """
    The request has no token, or one the daemon does not know (401).

    @ivar error: the RFC 6750 error code, if the request had a token.
    """

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


class NotPermitted(Exception):
    """The request's token may not do what it asks (403)."""


class Revocable(Protocol):
    """What a grant ends when it is revoked: a watch made with it."""

    def revoke(self, reason: str) -> None:
        """End, telling the client C{reason}."""


class Grant:
    """
    The permissions of one token: keys under each of C{read} it may read,
    keys under each of C{write} it may read and write; all of them if
    C{admin}; C{/_metrics} if C{metrics} or C{admin}; C{digest} is the SHA-256 of its token. For a key under
    several prefixes, the longest decides: with C{write=[""]} and
    C{read=["config/"]}, C{config/x} is read-only.

    A grant taken away by a reload of the token file is L{revoked}: requests
    no longer pass with it, and the watches made with it end.
    """

    def __init__(
        self,
        name: str,
        read: Iterable[str] = (),
        write: Iterable[str] = (),
        admin: bool = False,
        digest: bytes = b"",
        metrics: bool = False,
    ) -> None:
        self.name = name
        self.admin = admin
        self.metrics = metrics or admin
        self.digest = digest
        rules = dict.fromkeys(read, False)
        rules.update(dict.fromkeys(write, True))
        # Longest first: the first that matches decides.
        self._rules = sorted(rules.items(), key=lambda rule: -len(rule[0]))
        self._prefixes = tuple(rules)
        self.revoked = False
        self._watchers: weakref.WeakSet[Revocable] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"<Grant {self.name!r}>"

    @property
    def permissions(self) -> tuple[bool, bool, tuple[tuple[str, bool], ...]]:
        """What the grant allows, for comparing two: C{(admin, metrics, rules)}."""
        return self.admin, self.metrics, tuple(sorted(self._rules))

    def may_read(self, key: str) -> bool:
        """Whether the token may read C{key}: every rule grants reading."""
        return self.admin or key.startswith(self._prefixes)

    def may_write(self, key: str) -> bool:
        """Whether the token may write C{key}: as its longest matching prefix says."""
        if self.admin:
            return True
        for prefix, writes in self._rules:
            if key.startswith(prefix):
                return writes
        return False

    def require(self, key: str, write: bool) -> None:
        """
        @raise NotPermitted: unless the token may read C{key}, or write it
            if C{write}.
        """
        if not (self.may_write(key) if write else self.may_read(key)):
            what = "write" if write else "read"
            raise NotPermitted(f"token {self.name!r} may not {what} the key {key!r}")

    def require_metrics(self) -> None:
        """@raise NotPermitted: unless the token may read the daemon's metrics."""
        if not self.metrics:
            raise NotPermitted(f"token {self.name!r} may not read the metrics")

    def readable_under(self, prefix: str) -> tuple[str, ...] | None:
        """
        The prefixes, in order and none within another, of the keys under
        C{prefix} the token may read; C{None} if it may read them all.
        """
        if self.admin or prefix.startswith(self._prefixes):
            return None
        found: list[str] = []
        for rule in sorted(p for p, _ in self._rules if p.startswith(prefix)):
            if not (found and rule.startswith(found[-1])):
                found.append(rule)
        return tuple(found)

    def require_some(self, prefix: str) -> tuple[str, ...] | None:
        """
        L{readable_under}, for a listing or a watch of C{prefix}.

        @raise NotPermitted: if the token may read no key under it.
        """
        readable = self.readable_under(prefix)
        if readable == ():
            raise NotPermitted(
                f"token {self.name!r} may read no key under the prefix {prefix!r}"
            )
        return readable

    def follow(self, watcher: Revocable) -> None:
        """
        End C{watcher} should the grant be revoked (at once, if it is): a
        watch, once admitted.
        """
        if self.revoked:
            watcher.revoke("the token was revoked")
        else:
            self._watchers.add(watcher)

    def revoke(self, reason: str) -> None:
        """Take the grant away: the watches made with it end, saying C{reason}."""
        self.revoked = True
        watchers, self._watchers = list(self._watchers), weakref.WeakSet()
        for watcher in watchers:
            # One watch failing to end must not keep the others going.
            try:
                watcher.revoke(reason)
            except Exception:
                _log.failure("Watch {watcher} failed to end", watcher=watcher)


# Everyone, when the daemon has no tokens: it serves loopback only.
ANYONE = Grant("anyone", admin=True)
