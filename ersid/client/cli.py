"""
The C{ersid} command: get, set, delete, list and watch keys of an Ersid
server, run a command holding a lock, and back the store up and restore it.

Exit status: 0 done; 1 no such key; 2 usage error; 3 precondition failed;
4 request rejected (bad key, value too large); 5 server unreachable or
unavailable; 6 standard input or output failed (a closed pipe, a full disk);
7 a watch's history is gone (list again, then watch from its revision);
8 the lock was still held by another at C{--timeout}; 10 not allowed (no
token, a wrong one, or one without the permission). C{ersid lock} exits
with its command's status (128 + N if a signal N ended it), or 9 if the
lock was lost while the command ran (the command is then ended), or 127 if
the command cannot be run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from ersid import __version__
from ersid.client import (
    DEFAULT_CONTENT_TYPE,
    Client,
    ClientError,
    ClientTLS,
    ConditionFailed,
    HistoryGone,
    KeyNotFound,
    LockTimeout,
    NotAllowed,
    ServerUnavailable,
    check_url,
)
from ersid.client.locking import DEFAULT_LOCK_TTL
from ersid.client.running import run_locked
from ersid.client.tls import check_token

__all__ = ["main", "url_argument"]

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_PRECONDITION_FAILED = 3
EXIT_REJECTED = 4
EXIT_UNAVAILABLE = 5
EXIT_LOCAL_IO = 6
EXIT_HISTORY_GONE = 7
EXIT_LOCK_TIMEOUT = 8
EXIT_NOT_ALLOWED = 10
_MOST_SECONDS = 10 * 365.25 * 86400

_EXIT_CODES = {
    KeyNotFound: EXIT_NOT_FOUND,
    ConditionFailed: EXIT_PRECONDITION_FAILED,
    ServerUnavailable: EXIT_UNAVAILABLE,
    HistoryGone: EXIT_HISTORY_GONE,
    LockTimeout: EXIT_LOCK_TIMEOUT,
    NotAllowed: EXIT_NOT_ALLOWED,
}
# The options naming a file: each its destination, environment variable
# and meaning.
_FILE_OPTIONS = [
    (
        "--token-file",
        "token_file",
        "ERSID_TOKEN_FILE",
        "file holding the token to send; else $ERSID_TOKEN is, if set",
    ),
    ("--ca", "ca_file", "ERSID_CA", "PEM file of the CAs to trust, not the system's"),
    (
        "--cert",
        "certificate_file",
        "ERSID_CERT",
        "PEM file of a client certificate, for servers that require one",
    ),
    ("--key", "key_file", "ERSID_KEY", "PEM file of its key, unless in --cert's file"),
]
# The options before the command that take a value.
_VALUED = {"--url", *(option for option, *_ in _FILE_OPTIONS)}


def _seconds(least: float) -> Any:
    """Seconds, at least C{least} and at most ten years (the longest TTL)."""

    def seconds(text: str) -> float:
        try:
            number = float(text)
        except ValueError:
            number = -1.0
        if not least <= number <= _MOST_SECONDS:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of seconds from {least:g} to {_MOST_SECONDS:.0f}"
            )
        return number

    return seconds


def url_argument(text: str) -> str:
    """C{--url}, checked as the client will use it."""
    try:
        return check_url(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ersid",
        description="Get, set, delete, list and watch the keys of an Ersid server.",
        epilog="Exit status: 0 done, 1 no such key, 2 usage error, 3 precondition "
        "failed, 4 request rejected, 5 server unreachable or unavailable, "
        "6 standard input or output failed, 7 a watch's history is gone, 8 a lock "
        "still held at --timeout, 10 not allowed; ersid lock: its command's "
        "status, 9 lock lost, 127 command not run.",
    )
    parser.add_argument("--version", action="version", version=f"ersid {__version__}")
    parser.add_argument(
        "--url",
        type=url_argument,
        default=os.environ.get("ERSID_URL", "http://localhost:8080"),
        help="server URL (default: $ERSID_URL, else http://localhost:8080)",
    )
    for option, dest, variable, meaning in _FILE_OPTIONS:
        parser.add_argument(
            option,
            metavar="FILE",
            dest=dest,
            default=os.environ.get(variable),
            help=f"{meaning} (default: ${variable})",
        )
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("get", help="write a value's bytes to stdout")
    get.add_argument("key")
    put = commands.add_parser("set", help="store a value ('-' reads stdin)")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--content-type", default=DEFAULT_CONTENT_TYPE)
    put.add_argument("--if-match", metavar="ETAG", help="only if the ETag matches")
    put.add_argument("--create-only", action="store_true", help="only if absent")
    put.add_argument(
        "--ttl", type=_seconds(0.001), metavar="S", help="expire after S seconds"
    )
    delete = commands.add_parser("delete", help="remove a key")
    delete.add_argument("key")
    delete.add_argument("--if-match", metavar="ETAG", help="only if the ETag matches")
    listing = commands.add_parser("list", help="list keys, one a line")
    listing.add_argument("prefix", nargs="?", default="")
    watching = commands.add_parser(
        "watch", help="print each change as a JSON line, resuming after disconnects"
    )
    watching.add_argument("prefix", nargs="?", default="")
    watching.add_argument(
        "--since", type=int, metavar="REVISION", help="the changes after it"
    )
    watching.add_argument("--values", action="store_true", help="with the values")
    locking = commands.add_parser(
        "lock",
        usage="ersid lock [-h] [--ttl S] [--timeout S] NAME -- COMMAND [ARGUMENT ...]",
        help="run a command holding a lock that frees itself if ersid lock dies",
        description="Take the lock NAME (waiting while another holds it), run "
        "COMMAND, keeping the lock alive while it runs, then free it; exit with "
        "COMMAND's status. $ERSID_LOCK_TOKEN tells COMMAND the lock's token.",
    )
    locking.add_argument("name", metavar="NAME", help="the lock's key")
    locking.add_argument(
        "--ttl",
        type=_seconds(0.001),
        default=DEFAULT_LOCK_TTL,
        metavar="S",
        help=f"seconds the lock outlives its holder (default {DEFAULT_LOCK_TTL:g})",
    )
    locking.add_argument(
        "--timeout",
        type=_seconds(0),
        metavar="S",
        help="give up after S seconds (exit 8); 0: try once",
    )
    _add_token_commands(commands)
    _add_backup_commands(commands)
    return parser


def _add_backup_commands(commands: Any) -> None:
    """C{ersid backup FILE}, from a server; C{ersid restore FILE}, into files."""
    backup = commands.add_parser(
        "backup",
        help="save a snapshot of the whole store (an admin token's) to FILE",
        description="Save the store as it is at one revision to FILE, in the "
        "format of the daemon's snapshot file, without stopping the server: "
        "written under a temporary name, checked whole, synced, then renamed "
        "(mode 0600). Restore it with ersid restore.",
    )
    backup.add_argument("file", metavar="FILE")
    restore = commands.add_parser(
        "restore",
        help="put a backup where a new daemon starts from it",
        description="Restore FILE, made by ersid backup, for a daemon to start "
        "from: into an empty data directory (the dict backend; start the "
        "daemon with the same --data-dir and --dump-file), or into a "
        "database that holds no key (MySQL). Nothing is changed unless all of "
        "it is restored. Exit status: 0 done, 2 usage error, 4 refused (a "
        "target not empty, a file that is not a whole snapshot), 5 database "
        "unreachable, 6 a file could not be read or written.",
    )
    restore.add_argument("file", metavar="FILE")
    into = restore.add_mutually_exclusive_group(required=True)
    into.add_argument("--data-dir", metavar="DIR", help="the dict backend's directory")
    into.add_argument(
        "--mysql-url",
        metavar="URL",
        help="mysql://USER@HOST[:PORT]/DATABASE[?unix_socket=PATH], as the daemon's",
    )
    restore.add_argument(
        "--dump-file",
        metavar="PATH",
        help="with --data-dir: the daemon's --dump-file (default: DIR/snapshot.json)",
    )
    restore.add_argument(
        "--mysql-password-file",
        metavar="FILE",
        help="with --mysql-url: the password's file; else $ERSID_MYSQL_PASSWORD",
    )


def _add_token_commands(commands: Any) -> None:
    """C{ersid token add|list|remove}, which change a token file, not a server."""
    token = commands.add_parser(
        "token",
        help="make, list and remove the tokens of a token file",
        description="Make, list and remove the tokens of a daemon's token file "
        "(--tokens); send the daemon SIGHUP to take the changes.",
    )
    actions = token.add_subparsers(dest="action", required=True)
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument(
        "--tokens",
        metavar="FILE",
        default=os.environ.get("ERSID_TOKENS"),
        required="ERSID_TOKENS" not in os.environ,
        help="the token file (default: $ERSID_TOKENS)",
    )
    add = actions.add_parser(
        "add",
        parents=[files],
        help="make a token, print it once, and add its hash to the file",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--read",
        action="append",
        default=[],
        metavar="PREFIX",
        help="may read the keys starting with PREFIX ('' for all)",
    )
    add.add_argument(
        "--write",
        action="append",
        default=[],
        metavar="PREFIX",
        help="may read and write the keys starting with PREFIX",
    )
    add.add_argument(
        "--metrics", action="store_true", help="may read /_metrics (for Prometheus)"
    )
    add.add_argument("--admin", action="store_true", help="may do anything")
    actions.add_parser(
        "list", parents=[files], help="list the tokens' names and permissions"
    )
    remove = actions.add_parser("remove", parents=[files], help="remove a token")
    remove.add_argument("name", metavar="NAME")


async def _run(client: Client, arguments: argparse.Namespace, reactor: Any) -> None:
    if arguments.command == "get":
        value = await client.get(arguments.key)
        sys.stdout.buffer.write(value.data)
        sys.stdout.buffer.flush()
    elif arguments.command == "set":
        if arguments.value == "-":
            data = sys.stdin.buffer.read()
        else:
            data = os.fsencode(arguments.value)
        etag = await client.set(
            arguments.key,
            data,
            arguments.content_type,
            if_match=arguments.if_match,
            create_only=arguments.create_only,
            ttl=arguments.ttl,
        )
        print(etag)
    elif arguments.command == "delete":
        await client.delete(arguments.key, if_match=arguments.if_match)
    elif arguments.command == "lock":
        request = client.lock(arguments.name, arguments.ttl, arguments.timeout)
        raise SystemExit(await run_locked(request, arguments.argv, reactor))
    elif arguments.command == "watch":
        changes = client.watch(arguments.prefix, arguments.since, arguments.values)
        async for event in changes:
            print(json.dumps(event.data), flush=True)
    elif arguments.command == "backup":
        try:
            backup = await client.backup(arguments.file)
        except OSError as e:
            print(
                f"ersid: cannot write {arguments.file}: {e.strerror}", file=sys.stderr
            )
            raise SystemExit(EXIT_LOCAL_IO) from None
        print(
            f"{backup.path}: {backup.keys} keys at revision {backup.revision}, "
            f"{backup.size} bytes"
        )
    else:
        for key in await client.list(arguments.prefix):
            print(key)


def _subcommand(argv: list[str]) -> str | None:
    """The command named in C{argv}, past the options before it."""
    words = iter(argv)
    for word in words:
        if word in _VALUED:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _token(parser: argparse.ArgumentParser, path: str | None) -> str | None:
    """
    The token of C{--token-file}, else of C{$ERSID_TOKEN}: never an argument,
    which anyone may read in C{ps}.
    """
    if path is None:
        token = os.environ.get("ERSID_TOKEN")
    else:
        try:
            with open(path, encoding="ascii") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            parser.error(f"--token-file {path}: {getattr(e, 'strerror', None) or e}")
    if token is not None:
        try:
            check_token(token)
        except ValueError as e:
            parser.error(str(e))
    return token


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    # What follows ersid lock's "--" is its command, not options of ours.
    command: list[str] = []
    if "--" in argv and _subcommand(argv) == "lock":
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    arguments = parser.parse_args(argv)
    arguments.argv = command
    if arguments.command == "lock" and not command:
        parser.error("ersid lock needs a command to run: ersid lock NAME -- COMMAND")
    if arguments.command == "token":
        # Server code, loaded only for it: the client stands apart.
        from ersid.auth.command import run_token_command

        raise SystemExit(run_token_command(arguments))
    if arguments.command == "restore":
        from ersid.snapshots.restore import run_restore_command

        raise SystemExit(run_restore_command(arguments))
    token = _token(parser, arguments.token_file)
    tls = None
    if arguments.ca_file or arguments.certificate_file:
        tls = ClientTLS(
            arguments.ca_file, arguments.certificate_file, arguments.key_file
        )

    async def run(reactor: Any) -> None:
        try:
            client = Client(arguments.url, reactor, False, token, tls)
        except (OSError, ValueError) as e:
            print(f"ersid: cannot use the TLS files: {e}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        try:
            await _run(client, arguments, reactor)
        except ClientError as e:
            print(f"ersid: {e}", file=sys.stderr)
            raise SystemExit(_EXIT_CODES.get(type(e), EXIT_REJECTED)) from None
        except BrokenPipeError:
            # Whoever read the output has gone (as "| head" does): stop
            # quietly, and keep Python from failing to flush it at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(EXIT_LOCAL_IO) from None
        except OSError as e:
            # The client's own failures are ClientErrors: this is stdin or stdout.
            print(f"ersid: standard input or output: {e.strerror}", file=sys.stderr)
            raise SystemExit(EXIT_LOCAL_IO) from None

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
