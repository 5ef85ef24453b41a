"""
Access control as an operator meets it, with the real daemon: no listening
where others can reach without tokens, tokens and client certificates
through C{twistd ersid}'s options, C{SIGHUP} taking a changed token file,
and the C{ersid} command with a token file or C{$ERSID_TOKEN}.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from ersid.auth import add_token, remove_token
from ersid.client.cli import EXIT_NOT_ALLOWED
from ersid.listening import reachable
from ersid.tap import Options

from ._helpers import CHECKOUT, Daemon, http
from ._pki import Authority


def _ersid(url: str, *args: str, env=None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from ersid.client.cli import main; main()",
            "--url",
            url,
            *args,
        ],
        capture_output=True,
        cwd=CHECKOUT,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": CHECKOUT, **(env or {})},
    )


class NoOpenDoorTests(TestCase):
    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())

    def test_refuses_to_listen_publicly_without_tokens(self):
        async def check():
            daemon = Daemon.ersid(self, self.data_dir, "-p", "tcp:0:interface=0.0.0.0")
            self.assertEqual(await daemon.ended, 1)
            (line,) = [line for line in daemon.output.splitlines() if "ersid:" in line]
            self.assertIn("would listen on 0.0.0.0", line)
            self.assertIn("--tokens FILE", line)
            self.assertIn("--insecure-no-auth", line)
            self.assertNotIn("Traceback", daemon.output)

        return Deferred.fromCoroutine(check())

    def test_serves_publicly_when_told_the_network_is_trusted(self):
        async def check():
            daemon = Daemon.ersid(
                self,
                self.data_dir,
                *("-p", "tcp:0:interface=0.0.0.0", "--insecure-no-auth"),
            )
            match = await daemon.said(rb"REST API listening on .*port=(\d+)")
            response = await http().get(f"http://127.0.0.1:{int(match[1])}/_health")
            self.assertEqual(response.code, 200)
            await response.content()

        return Deferred.fromCoroutine(check())

    def test_what_others_can_reach(self):
        self.assertFalse(reachable(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertFalse(reachable(IPv4Address("TCP", "127.9.9.9", 1)))
        self.assertFalse(reachable(IPv6Address("TCP", "::1", 1)))
        self.assertFalse(reachable(IPv6Address("TCP", "::ffff:127.0.0.1", 1)))
        self.assertFalse(reachable(UNIXAddress("/run/ersid.sock")))
        self.assertTrue(reachable(IPv4Address("TCP", "0.0.0.0", 1)))
        self.assertTrue(reachable(IPv4Address("TCP", "10.0.0.5", 1)))
        self.assertTrue(reachable(IPv6Address("TCP", "::", 1)))
        self.assertTrue(reachable(IPv6Address("TCP", "fe80::1%eth0", 1)))

    def test_options_that_do_not_go_together(self):
        for args, said in [
            (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
            (["--tls-key", "k.pem"], "--tls-cert and --tls-key go together"),
            (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert"),
            (["--tokens", "t", "--insecure-no-auth"], "makes no sense with --tokens"),
            (
                ["-p", "ssl:0:privateKey=k.pem", "--tls-cert", "c", "--tls-key", "k"],
                "give it as tcp:",
            ),
        ]:
            with self.assertRaises(SystemExit) as raised:
                Options().parseOptions(["--data-dir", self.data_dir, *args])
            self.assertIn(said, raised.exception.code)


class TokensAndCertificatesTests(TestCase):
    def test_sighup_and_the_ersid_command_over_https_with_client_certificates(self):
        """
        The daemon, with tokens and client certificates required, serves
        the C{ersid} command; a token added to the file works once the
        daemon is sent C{SIGHUP}, and a removed one stops working then.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca = Authority(directory, "ersid")
        server_certificate, server_key = ca.issue("server")
        certificate, key = ca.issue("robot", client=True)
        tokens = os.path.join(directory, "tokens.jsonl")
        robot = add_token(tokens, "robot", write=("app/",))
        robot_file = os.path.join(directory, "robot.token")
        with open(robot_file, "w") as f:
            f.write(robot + "\n")
        tls = ["--ca", ca.certificate, "--cert", certificate, "--key", key]

        async def check():
            daemon = Daemon.ersid(
                self,
                os.path.join(directory, "data"),
                *("--tokens", tokens),
                *("--tls-cert", server_certificate, "--tls-key", server_key),
                *("--tls-client-ca", ca.certificate),
            )
            port = int((await daemon.said(rb"REST API listening on .*port=(\d+)"))[1])
            url = f"https://localhost:{port}"

            def run(*args: str, env=None) -> subprocess.CompletedProcess[bytes]:
                return _ersid(url, *tls, *args, env=env)

            done = await deferToThread(
                run, "--token-file", robot_file, "set", "app/k", "v"
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            done = await deferToThread(run, "get", "app/k", env={"ERSID_TOKEN": robot})
            self.assertEqual((done.returncode, done.stdout), (0, b"v"), done.stderr)
            done = await deferToThread(run, "get", "app/k")
            self.assertEqual(done.returncode, EXIT_NOT_ALLOWED)
            self.assertIn(b"needs a token", done.stderr)
            done = await deferToThread(
                run, "set", "x/k", "v", env={"ERSID_TOKEN": robot}
            )
            self.assertEqual(done.returncode, EXIT_NOT_ALLOWED)
            self.assertIn(b"may not write", done.stderr)

            reader = add_token(tokens, "reader", read=("app/",))
            done = await deferToThread(run, "get", "app/k", env={"ERSID_TOKEN": reader})
            self.assertEqual(done.returncode, EXIT_NOT_ALLOWED)
            remove_token(tokens, "robot")
            daemon.process.signalProcess("HUP")
            await daemon.said(rb"Tokens reloaded .*revoked: robot")
            done = await deferToThread(run, "get", "app/k", env={"ERSID_TOKEN": reader})
            self.assertEqual((done.returncode, done.stdout), (0, b"v"), done.stderr)
            done = await deferToThread(run, "get", "app/k", env={"ERSID_TOKEN": robot})
            self.assertEqual(done.returncode, EXIT_NOT_ALLOWED)
            # Without a client certificate, no answer at all.
            done = await deferToThread(
                _ersid,
                url,
                "--ca",
                ca.certificate,
                "get",
                "app/k",
                env={"ERSID_TOKEN": reader},
            )
            self.assertEqual(done.returncode, 5, done.stderr)
            self.assertNotIn(robot.encode(), daemon.output_bytes)
            self.assertNotIn(reader.encode(), daemon.output_bytes)
            self.assertEqual(await daemon.stop(), -signal.SIGTERM)

        return Deferred.fromCoroutine(check())
