"""
The API over TLS, as the real C{curl}, the client library and the C{ersid}
command see it: through an C{ssl:} endpoint, and as the daemon's
C{--tls-*} options make it, with client certificates.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from ersid.auth import TokenAccess, add_token
from ersid.client import Client, ClientTLS, NotAllowed, ServerUnavailable
from ersid.embedded.memory import DictStorage
from ersid.startup import StartupError
from ersid.tls import TLSFactory, server_tls
from ersid.web.app import Service
from ersid.web.site import makeSite

from .._helpers import CHECKOUT, require
from .._pki import Authority


def _self_signed(directory: str) -> tuple[str, str]:
    """A key and a certificate for C{localhost}, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = os.path.join(directory, "key.pem")
    certificate_path = os.path.join(directory, "certificate.pem")
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(certificate_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, certificate_path


class TLSTests(TestCase):
    def test_curl_over_tls(self):
        """
        Keys are written and read over TLS, several requests on one
        connection, and a bad request is answered in JSON there too.
        """
        require(bool(shutil.which("curl")), "curl")
        directory = self.mktemp()
        os.makedirs(directory)
        key, certificate = _self_signed(directory)
        storage = DictStorage()

        async def check() -> None:
            endpoint = serverFromString(
                reactor,
                f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={certificate}",
            )
            port = await endpoint.listen(makeSite(Service(storage)))
            self.addCleanup(port.stopListening)
            url = f"https://localhost:{port.getHost().port}"
            common = [
                "-sS",
                "--cacert",
                certificate,
                "--resolve",
                f"localhost:{port.getHost().port}:127.0.0.1",
                "-w",
                "%{http_code}\\n",
            ]
            output, errors, status = await getProcessOutputAndValue(
                shutil.which("curl"),
                [
                    *common,
                    "-X",
                    "PUT",
                    "--data-binary",
                    "over tls",
                    f"{url}/k",
                    "--next",
                    *common,
                    f"{url}/k",
                    "--next",
                    *common,
                    f"{url}/_keys?limit=0",
                ],
            )
            self.assertEqual(status, 0, errors)
            lines = output.split(b"\n")
            self.assertEqual(lines[0], b"201")
            self.assertEqual(lines[1], b"over tls200")
            self.assertIn(b'"error": "bad_query"', lines[2])
            self.assertEqual(lines[3], b"400")
            self.assertEqual((await storage.get("k")).value, b"over tls")

        return Deferred.fromCoroutine(check())


async def _curl(*args: str) -> tuple[int, bytes, bytes]:
    """Run the real curl: its exit status, output and errors."""
    output, errors, status = await getProcessOutputAndValue(
        shutil.which("curl"), ["-sS", "--max-time", "20", *args]
    )
    return status, output, errors


class ClientCertificateTests(TestCase):
    """
    HTTPS as C{--tls-cert}, C{--tls-key} and C{--tls-client-ca} make it:
    tokens over it, client certificates required and checked, as the real
    curl, the client library and the C{ersid} command meet them.
    """

    def setUp(self):
        require(bool(shutil.which("curl")), "curl")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.ca = Authority(self.directory, "ersid")
        self.server = self.ca.issue("server")
        self.robot = self.ca.issue("robot", client=True)
        self.other = Authority(self.directory, "other")
        self.intruder = self.other.issue("intruder", client=True)
        self.old = self.ca.issue("old", client=True, expired=True)
        self.tokens = os.path.join(self.directory, "tokens.jsonl")
        self.token = add_token(self.tokens, "robot", write=("app/",))
        self.storage = DictStorage()
        self.service = Service(self.storage, access=TokenAccess(self.tokens))

    async def serve(self, client_ca: str | None) -> str:
        options = server_tls(*self.server, client_ca)
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(TLSFactory(options, makeSite(self.service)))
        self.addCleanup(port.stopListening)
        return f"https://localhost:{port.getHost().port}"

    def curl_with(self, url: str, *args: str) -> list[str]:
        port = url.rsplit(":", 1)[1]
        return ["--resolve", f"localhost:{port}:127.0.0.1", *args]

    def test_tokens_over_https_with_curl(self):
        async def check():
            url = await self.serve(None)
            bearer = f"Authorization: Bearer {self.token}"
            status, output, errors = await _curl(
                *self.curl_with(url, "--cacert", self.ca.certificate),
                *(
                    "-H",
                    bearer,
                    "-X",
                    "PUT",
                    "--data-binary",
                    "v",
                    "-w",
                    "%{http_code}",
                ),
                f"{url}/app/k",
            )
            self.assertEqual((status, output), (0, b"201"), errors)
            status, output, _ = await _curl(
                *self.curl_with(url, "--cacert", self.ca.certificate),
                *("-w", "%{http_code}"),
                f"{url}/app/k",
            )
            self.assertEqual(status, 0)
            self.assertTrue(output.endswith(b"401"), output)
            # A client that does not trust the CA does not talk.
            status, _, errors = await _curl(*self.curl_with(url), f"{url}/app/k")
            self.assertEqual(
                status, 60, errors
            )  # the peer's certificate is not trusted

        return Deferred.fromCoroutine(check())

    def test_only_clients_with_a_certificate_of_the_ca(self):
        async def check():
            url = await self.serve(self.ca.certificate)
            bearer = f"Authorization: Bearer {self.token}"

            async def put(*certificate: str) -> tuple[int, bytes, bytes]:
                return await _curl(
                    *self.curl_with(url, "--cacert", self.ca.certificate),
                    *("-H", bearer, "-X", "PUT", "--data-binary", "v"),
                    *("-w", "%{http_code}"),
                    *certificate,
                    f"{url}/app/{len(certificate)}",
                )

            status, output, errors = await put(
                "--cert", self.robot[0], "--key", self.robot[1]
            )
            self.assertEqual((status, output), (0, b"201"), errors)
            for refused in (
                (),
                ("--cert", self.intruder[0], "--key", self.intruder[1]),
                ("--cert", self.old[0], "--key", self.old[1]),
            ):
                status, output, errors = await put(*refused)
                self.assertNotEqual(status, 0, refused)
                self.assertEqual(output, b"000", (refused, output))  # no answer at all
            self.assertEqual((await self.storage.keys()).items, ["app/4"])

        return Deferred.fromCoroutine(check())

    def test_client_library(self):
        async def check():
            url = await self.serve(self.ca.certificate)
            tls = ClientTLS(self.ca.certificate, *self.robot)
            client = Client(url, reactor, token=self.token, tls=tls)
            self.addCleanup(client.close)
            await client.set("app/k", b"over https")
            self.assertEqual((await client.get("app/k")).data, b"over https")
            with self.assertRaises(NotAllowed):
                await client.set("other/k", b"v")
            # A file of several CAs: each is trusted.
            bundle = os.path.join(self.directory, "bundle.pem")
            with open(bundle, "wb") as f:
                for path in (self.other.certificate, self.ca.certificate):
                    with open(path, "rb") as ca:
                        f.write(ca.read())
            tls = ClientTLS(bundle, *self.robot)
            bundled = Client(url, reactor, persistent=False, token=self.token, tls=tls)
            self.assertEqual((await bundled.get("app/k")).data, b"over https")
            for refused in (
                ClientTLS(self.ca.certificate),  # no client certificate
                ClientTLS(self.ca.certificate, *self.intruder),
                ClientTLS(self.intruder[0], *self.robot),  # trusts another CA
            ):
                stranger = Client(
                    url, reactor, persistent=False, token=self.token, tls=refused
                )
                with self.assertRaises(ServerUnavailable):
                    await stranger.get("app/k")

        return Deferred.fromCoroutine(check())

    def test_a_key_others_may_read_is_refused(self):
        os.chmod(self.server[1], 0o644)
        with self.assertRaises(StartupError) as caught:
            server_tls(*self.server)
        self.assertIn("chmod 600", str(caught.exception))

    def test_a_key_of_another_certificate_is_refused(self):
        with self.assertRaises(StartupError) as caught:
            server_tls(self.server[0], self.robot[1])
        self.assertIn(self.robot[1], str(caught.exception))

    def test_files_that_are_not_pem(self):
        with self.assertRaises(StartupError) as caught:
            server_tls(self.tokens, self.server[1])
        self.assertIn("no PEM certificate", str(caught.exception))
        with self.assertRaises(StartupError) as caught:
            server_tls(*self.server, client_ca=self.server[1])
        self.assertIn("no PEM certificate", str(caught.exception))

    def test_a_key_with_a_passphrase_is_refused_without_asking_for_it(self):
        with open(self.server[1], "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        with open(self.server[1], "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            )
        with self.assertRaises(StartupError) as caught:
            server_tls(*self.server)
        self.assertIn("without a passphrase", str(caught.exception))

    def test_the_ersid_command_with_tls_files_it_cannot_use(self):
        encrypted = os.path.join(self.directory, "encrypted-key.pem")
        with open(self.robot[1], "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        with open(encrypted, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            )
        for files in (
            ["--cert", self.robot[0], "--key", encrypted],  # asks for nothing
            ["--cert", self.robot[0], "--key", self.intruder[1]],  # not a pair
            ["--cert", self.robot[0]],  # no key
            ["--ca", self.tokens],  # no certificate
        ):
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "from ersid.client.cli import main; main()",
                    "--url",
                    "https://localhost:1",
                    *files,
                    "get",
                    "k",
                ],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PYTHONPATH": CHECKOUT},
            )
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertIn("cannot use the TLS files", done.stderr)
            self.assertNotIn("Traceback", done.stderr)
