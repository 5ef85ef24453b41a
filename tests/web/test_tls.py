"""
The API over TLS, through an C{ssl:} endpoint, as the real C{curl} sees it.
"""

from __future__ import annotations

import datetime
import os
import shutil

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from ersid.embedded.memory import DictStorage
from ersid.web.app import Service
from ersid.web.site import makeSite

from .._helpers import require


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
