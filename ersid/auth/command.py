"""
C{ersid token} (its arguments are in L{ersid.client.cli}): make, list and
remove the tokens of a token file, so that nobody writes hashes by hand.
A new token is printed once, on standard output, and kept nowhere; the
daemon takes changes on C{SIGHUP}.
"""

from __future__ import annotations

import argparse
import sys

from ersid.auth.token_file import (
    TokenEntry,
    TokenFileError,
    add_token,
    read_token_file,
    remove_token,
)

__all__ = ["run_token_command"]


def run_token_command(arguments: argparse.Namespace) -> int:
    """Do what C{ersid token} was asked; the exit status."""
    try:
        if arguments.action == "add":
            if not (
                arguments.read
                or arguments.write
                or arguments.admin
                or arguments.metrics
            ):
                print(
                    "ersid: a token needs --read PREFIX, --write PREFIX, --metrics "
                    "or --admin",
                    file=sys.stderr,
                )
                return 2
            token = add_token(
                arguments.tokens,
                arguments.name,
                tuple(arguments.read),
                tuple(arguments.write),
                arguments.admin,
                arguments.metrics,
            )
            print(token)
            print(
                f"ersid: token {arguments.name!r} added to {arguments.tokens}; it is "
                "shown only this once. Send the daemon SIGHUP to take it.",
                file=sys.stderr,
            )
        elif arguments.action == "list":
            for entry in read_token_file(arguments.tokens):
                print(_describe(entry))
        elif not remove_token(arguments.tokens, arguments.name):
            print(f"ersid: no token named {arguments.name!r}", file=sys.stderr)
            return 1
        else:
            print(
                f"ersid: token {arguments.name!r} removed; send the daemon SIGHUP "
                "to refuse it.",
                file=sys.stderr,
            )
    except TokenFileError as e:
        print(f"ersid: {e}", file=sys.stderr)
        return 4
    return 0


def _describe(entry: TokenEntry) -> str:
    if entry.admin:
        return f"{entry.name}\tadmin"
    parts = [f"write {prefix!r}" for prefix in entry.write]
    parts += [f"read {prefix!r}" for prefix in entry.read if prefix not in entry.write]
    if entry.metrics:
        parts.append("metrics")
    return f"{entry.name}\t" + ", ".join(parts or ["nothing"])
