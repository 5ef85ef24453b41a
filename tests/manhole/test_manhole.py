"""
The SSH manhole: its credentials and host key, and a session with the real
OpenSSH client against a running Ersid.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import bcrypt
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from ersid.manhole.credentials import (
    HOST_KEY_NAME,
    HashedPasswordChecker,
    ManholeError,
    fingerprint,
    load_or_create_host_key,
    read_authorized_keys,
    read_password_file,
)
from ersid.manhole.server import makeFactory
from ersid.tap import Options, makeService

from .._helpers import Daemon, captured_log, http, require


def _ssh_keygen(path: str, kind: str = "ed25519") -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", path],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    with open(path + ".pub") as f:
        return f.read()


def _write_private(path: str, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(text)


def _require_openssh() -> None:
    require(
        bool(shutil.which("ssh") and shutil.which("ssh-keygen")),
        "needs the OpenSSH client: apt-get install openssh-client",
    )


class HostKeyTests(TestCase):
    def setUp(self):
        self.data_dir = os.path.join(self.mktemp(), "data")

    def test_created_private_then_reused(self):
        first = load_or_create_host_key(self.data_dir)
        path = os.path.join(self.data_dir, HOST_KEY_NAME)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.data_dir).st_mode), 0o700)
        self.assertEqual(first.sshType(), b"ssh-ed25519")
        again = load_or_create_host_key(self.data_dir)
        self.assertEqual(fingerprint(again), fingerprint(first))
        self.assertTrue(fingerprint(first).startswith("SHA256:"))

    def test_exposed_key_refused(self):
        load_or_create_host_key(self.data_dir)
        path = os.path.join(self.data_dir, HOST_KEY_NAME)
        os.chmod(path, 0o644)
        with self.assertRaises(ManholeError) as raised:
            load_or_create_host_key(self.data_dir)
        self.assertIn(f"chmod 600 {path}", str(raised.exception))

    def test_unreadable_key_refused(self):
        os.makedirs(self.data_dir, mode=0o700)
        _write_private(os.path.join(self.data_dir, HOST_KEY_NAME), "not a key")
        with self.assertRaises(ManholeError) as raised:
            load_or_create_host_key(self.data_dir)
        self.assertIn("cannot read SSH host key", str(raised.exception))


class CredentialFileTests(TestCase):
    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def test_authorized_keys_ed25519_and_rsa(self):
        _require_openssh()
        ed25519 = _ssh_keygen(self.path("ed"))
        rsa = _ssh_keygen(self.path("rsa"), "rsa")
        with open(self.path("authorized_keys"), "w") as f:
            f.write(f"# operators\n{ed25519}\n{rsa}")
            f.write(f'from="10.0.0.1" {ed25519}')
        found = read_authorized_keys(self.path("authorized_keys"))
        self.assertEqual([key.sshType() for key in found], [b"ssh-ed25519", b"ssh-rsa"])

    def test_authorized_keys_others_may_write_refused(self):
        """
        Anyone who can write the file, or add one to its directory, could
        add a key and get a Python prompt in the daemon: as OpenSSH's
        StrictModes does, such a file is refused.
        """
        with open(self.path("authorized_keys"), "w") as f:
            f.write("# no keys yet\n")
        os.chmod(self.directory, 0o755)
        for file_mode, directory_mode, exposed in [
            (0o666, 0o755, "file"),
            (0o620, 0o755, "file"),
            (0o644, 0o777, "directory"),
            (0o644, 0o1777, "directory"),
        ]:
            os.chmod(self.path("authorized_keys"), file_mode)
            os.chmod(self.directory, directory_mode)
            with self.assertRaises(ManholeError) as raised:
                read_authorized_keys(self.path("authorized_keys"))
            self.assertIn(f"its {exposed}", str(raised.exception))
        os.chmod(self.directory, 0o755)
        os.chmod(self.path("authorized_keys"), 0o644)
        self.assertEqual(read_authorized_keys(self.path("authorized_keys")), [])

    def test_missing_authorized_keys_is_empty(self):
        self.assertEqual(read_authorized_keys(self.path("nope")), [])

    def test_password_file(self):
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
        _write_private(self.path("passwd"), f"# comment\nops:{hashed}\n")
        self.assertEqual(
            read_password_file(self.path("passwd")), {b"ops": hashed.encode()}
        )

    def test_plain_text_password_refused(self):
        _write_private(self.path("passwd"), "ops:password\n")
        with self.assertRaises(ManholeError) as raised:
            read_password_file(self.path("passwd"))
        self.assertIn("plain-text passwords are not accepted", str(raised.exception))

    def test_damaged_or_unusable_hash_refused(self):
        """
        A hash that could never be checked stops the start, rather than
        failing every login with an error in the log.
        """
        good = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
        for hashed in [good[:-1], "$2b$12$short", "$9$unknown$method", "$6$\u00e9$x"]:
            _write_private(self.path("passwd"), f"ops:{hashed}\n")
            with self.assertRaises(ManholeError) as raised:
                read_password_file(self.path("passwd"))
            self.assertIn("line 1", str(raised.exception))
            self.assertIn("damaged", str(raised.exception))

    def test_password_file_readable_by_others_refused(self):
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
        _write_private(self.path("passwd"), f"ops:{hashed}\n")
        os.chmod(self.path("passwd"), 0o644)
        self.assertRaises(ManholeError, read_password_file, self.path("passwd"))


class PasswordCheckerTests(TestCase):
    def setUp(self):
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4))
        self.checker = HashedPasswordChecker({b"ops": hashed})

    def test_right_password(self):
        login = self.checker.requestAvatarId(UsernamePassword(b"ops", b"s3cret"))
        return login.addCallback(self.assertEqual, b"ops")

    def test_wrong_password(self):
        login = self.checker.requestAvatarId(UsernamePassword(b"ops", b"x"))
        return self.assertFailure(login, UnauthorizedLogin)

    def test_unknown_user(self):
        login = self.checker.requestAvatarId(UsernamePassword(b"root", b"s3cret"))
        return self.assertFailure(login, UnauthorizedLogin)

    def test_password_longer_than_bcrypt_reads_is_wrong_quietly(self):
        """
        bcrypt reads 72 bytes and refuses more: a longer password is a
        wrong one, quietly, even when its first 72 bytes are right.
        """
        checker = HashedPasswordChecker(
            {b"ops": bcrypt.hashpw(b"p" * 72, bcrypt.gensalt(4))}
        )
        logged = captured_log(self)

        async def check():
            self.assertEqual(
                await checker.requestAvatarId(UsernamePassword(b"ops", b"p" * 72)),
                b"ops",
            )
            for password in [b"p" * 73, b"p" * 72 + b"x" * 1000]:
                with self.assertRaises(UnauthorizedLogin):
                    await checker.requestAvatarId(UsernamePassword(b"ops", password))
            self.assertEqual(self.flushLoggedErrors(), [])
            self.assertFalse([m for m in logged if "Traceback" in m])

        return Deferred.fromCoroutine(check())


class LoginTimeoutTests(TestCase):
    def test_connection_that_never_logs_in_is_closed(self):
        clock = Clock()
        host_key = load_or_create_host_key(os.path.join(self.mktemp(), "data"))
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4))
        factory = makeFactory({}, host_key, [], {b"ops": hashed}, clock)
        factory.doStart()
        self.addCleanup(factory.doStop)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 5))
        protocol = factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        clock.advance(59)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])


class ManholeOptionsTests(TestCase):
    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())

    def children(self, *args: str) -> dict[str, object]:
        """The services of a daemon of its own data directory (each locks its own)."""
        self.daemon_dir = os.path.abspath(self.mktemp())
        options = Options()
        options.parseOptions(["-d", self.daemon_dir, "-p", "tcp:0", *args])
        return {
            getattr(child, "what", "timer"): child for child in makeService(options)
        }

    def test_off_without_credentials(self):
        nowhere = os.path.join(self.data_dir, "no-such-file")
        logged = captured_log(self)
        children = self.children("--manhole-authorized-keys", nowhere)
        self.assertNotIn("SSH manhole", children)
        self.assertTrue(
            any(
                f"SSH manhole off: no keys in {nowhere} and no --manhole-passwd" in m
                for m in logged
            ),
            logged,
        )
        self.assertFalse(os.path.exists(os.path.join(self.daemon_dir, HOST_KEY_NAME)))

    def test_none_turns_it_off(self):
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
        os.makedirs(self.data_dir)
        _write_private(os.path.join(self.data_dir, "passwd"), f"ops:{hashed}\n")
        passwd = os.path.join(self.data_dir, "passwd")
        on = self.children("-m", "tcp:0", "--manhole-passwd", passwd)
        self.assertEqual(on["SSH manhole"].description, "tcp:0")
        off = self.children("-m", "none", "--manhole-passwd", passwd)
        self.assertNotIn("SSH manhole", off)

    def test_plain_text_password_file_stops_startup(self):
        os.makedirs(self.data_dir)
        passwd = os.path.join(self.data_dir, "passwd")
        _write_private(passwd, "ops:hunter2\n")
        with self.assertRaises(SystemExit) as raised:
            self.children("--manhole-passwd", passwd)
        self.assertIn("plain-text passwords", str(raised.exception))


class OpenSSHSessionTests(TestCase):
    """
    The lab's manhole session, with the real OpenSSH client against a
    running Ersid.
    """

    def setUp(self):
        _require_openssh()
        self.logged = captured_log(self)
        self.errors: list[str] = []

        def errors(event: dict) -> None:
            if event.get("log_level") in (LogLevel.error, LogLevel.critical):
                self.errors.append(formatEvent(event))

        globalLogPublisher.addObserver(errors)
        self.addCleanup(globalLogPublisher.removeObserver, errors)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.key = os.path.join(self.directory, "operator")
        authorized = os.path.join(self.directory, "authorized_keys")
        with open(authorized, "w") as f:
            f.write(_ssh_keygen(self.key))
        passwd = os.path.join(self.directory, "passwd")
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
        _write_private(passwd, f"ops:{hashed}\n")
        options = Options()
        options.parseOptions(
            [
                *("-d", os.path.join(self.directory, "data")),
                *("-p", "tcp:0:interface=127.0.0.1"),
                *("-m", "tcp:0:interface=127.0.0.1"),
                *("--manhole-authorized-keys", authorized),
                *("--manhole-passwd", passwd),
            ]
        )
        self.daemon = makeService(options)
        self.daemon.startService()
        self.addCleanup(self.daemon.stopService)
        listeners = {
            child.what: child.address for child in self.daemon if hasattr(child, "what")
        }
        self.url = f"http://127.0.0.1:{listeners['REST API'].port}"
        self.ssh_port = listeners["SSH manhole"].port
        self.http = http()

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)

    def logged_later(self, text: str) -> Deferred[None]:
        """Fires once a log event says C{text}."""
        said: Deferred[None] = Deferred()

        def observe(event: dict) -> None:
            if not said.called and text in formatEvent(event):
                said.callback(None)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return said

    def ssh(self, user: str, *options: str, env=None) -> Daemon:
        client = Daemon(
            [
                shutil.which("ssh"),
                "-tt",
                *("-p", str(self.ssh_port)),
                *("-o", "StrictHostKeyChecking=no"),
                *("-o", "UserKnownHostsFile=/dev/null"),
                *("-o", "IdentitiesOnly=yes"),
                *("-o", "LogLevel=ERROR"),
                *options,
                f"{user}@127.0.0.1",
            ],
            env=env,
        )
        self.addCleanup(client.stop, "KILL")
        return client

    def key_login(self, key: str) -> Daemon:
        return self.ssh("operator", "-i", key, "-o", "BatchMode=yes")

    def password_login(self, password: str) -> Daemon:
        askpass = os.path.join(self.directory, "askpass")
        with open(askpass, "w") as f:
            f.write(f"#!/bin/sh\necho '{password}'\n")
        os.chmod(askpass, 0o700)
        return self.ssh(
            "ops",
            *("-o", "PubkeyAuthentication=no"),
            *("-o", "PreferredAuthentications=password"),
            *("-o", "NumberOfPasswordPrompts=1"),
            env={"SSH_ASKPASS": askpass, "SSH_ASKPASS_REQUIRE": "force"},
        )

    async def say(self, client: Daemon, line: str, answer: bytes) -> bytes:
        await client.said(rb">>> ")
        client.process.write(line.encode() + b"\n")
        return (await client.said(answer))[0]

    def test_lab_session_with_operator_key(self):
        async def check():
            await self.http.put(f"{self.url}/mykey", data=b"fromcurl")
            client = self.key_login(self.key)
            await self.say(client, 'print("RESULT", 6 * 7)', rb"RESULT 42")
            await self.say(
                client,
                'storage.get("mykey").addCallback(lambda r: print("GOT", r.value))',
                rb"GOT b'fromcurl'",
            )
            await self.say(
                client,
                'storage.set("k", b"from-ssh")',
                rb"called back: .*WriteResult\(version=\d+, created=True, expires=None\)",
            )
            await self.say(
                client, "print(type(service).__name__, 'OK')", rb"Service OK"
            )
            response = await self.http.get(f"{self.url}/k")
            self.assertEqual(await response.content(), b"from-ssh")
            ended = self.logged_later("Manhole session from 127.0.0.1 ended")
            client.process.write(b"\x04")
            self.assertEqual(await client.ended, 0)
            await ended
            self.assertIn(
                "Manhole login by operator from 127.0.0.1 (publickey)", self.logged
            )
            # A logout is no error, and Conch's chatter stays out of the log.
            self.assertEqual(self.errors, [])
            self.assertFalse([m for m in self.logged if "kex alg" in m])

        return self.run_async(check())

    def test_unknown_key_refused(self):
        async def check():
            stranger = os.path.join(self.directory, "stranger")
            _ssh_keygen(stranger)
            client = self.key_login(stranger)
            self.assertEqual(await client.ended, 255)
            self.assertIn("Permission denied", client.output)
            self.assertIn(
                "Manhole login refused for operator from 127.0.0.1 (publickey)",
                self.logged,
            )
            self.assertNotIn(
                "Manhole login by operator from 127.0.0.1 (publickey)", self.logged
            )

        return self.run_async(check())

    def test_password_login(self):
        async def check():
            client = self.password_login("s3cret")
            await self.say(client, 'print("RESULT", 6 * 7)', rb"RESULT 42")
            client.process.closeStdin()
            self.assertEqual(await client.ended, 0)

        return self.run_async(check())

    def test_wrong_password_refused(self):
        async def check():
            client = self.password_login("guess")
            self.assertEqual(await client.ended, 255)
            self.assertIn("Permission denied", client.output)
            self.assertIn(
                "Manhole login refused for ops from 127.0.0.1 (password)", self.logged
            )

        return self.run_async(check())
