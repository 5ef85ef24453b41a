"""
How a L{ersid.client.Client} speaks HTTPS: the CAs it trusts (the
system's, or a CA file's), the certificate it shows if the server asks for
one, and the token it sends with every request.
"""

from __future__ import annotations

import re

import attrs
from OpenSSL import crypto
from twisted.internet.defer import Deferred
from twisted.internet.error import VerifyError
from twisted.internet.ssl import (
    Certificate,
    KeyPair,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

__all__ = ["ClientTLS", "bearing", "check_token", "pem_certificates"]

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def pem_certificates(data: bytes) -> list[bytes]:
    """The PEM certificates in C{data}, in order (a chain, or several CAs)."""
    return _PEM_CERTIFICATE.findall(data)


@attrs.frozen
class ClientTLS:
    """
    HTTPS settings: C{ca}, a PEM file of the CAs to trust instead of the
    system's; C{certificate} and C{key}, PEM files of the client's
    certificate and key, for servers that require one.
    """

    ca: str | None = None
    certificate: str | None = None
    key: str | None = None

    def policy(self) -> IPolicyForHTTPS:
        """
        The policy an C{Agent} makes its TLS connections with.

        @raise OSError: if a file cannot be read.
        @raise ValueError: if it is not PEM of what it should be.
        """
        try:
            return self._policy()
        except (crypto.Error, VerifyError) as e:
            raise ValueError(
                "not a PEM certificate and its key (without a passphrase), "
                f"or not a pair: {e}"
            ) from None

    def _policy(self) -> IPolicyForHTTPS:
        trust = platformTrust()
        if self.ca is not None:
            with open(self.ca, "rb") as f:
                found = pem_certificates(f.read())
            if not found:
                raise ValueError(f"no PEM certificate in {self.ca}")
            trust = trustRootFromCertificates([Certificate.loadPEM(c) for c in found])
        client = None
        if self.certificate is not None:
            with open(self.certificate, "rb") as f:
                pem = f.read()
            if self.key is not None:
                with open(self.key, "rb") as f:
                    pem += b"\n" + f.read()
            # No passphrase: OpenSSL would ask for one on the terminal.
            key = KeyPair(crypto.load_privatekey(crypto.FILETYPE_PEM, pem, b""))
            client = PrivateCertificate.fromCertificateAndKeyPair(
                Certificate.loadPEM(pem), key
            )
        return _Policy(trust, client)


@implementer(IPolicyForHTTPS)
@attrs.frozen
class _Policy:
    trust: object
    client: PrivateCertificate | None

    def creatorForNetloc(self, hostname: bytes, port: int) -> object:
        return optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self.trust,
            clientCertificate=self.client,
        )


def check_token(token: str) -> str:
    """
    C{token}, if it can go in a header.

    @raise ValueError: if it has spaces or other characters that cannot.
    """
    if not token or not (token.isascii() and token.isprintable()) or " " in token:
        raise ValueError("a token is printable ASCII without spaces")
    return token


def bearing(agent: IAgent, token: str) -> IAgent:
    """C{agent}, sending C{Authorization: Bearer token} with every request."""
    return _Bearing(agent, b"Bearer " + check_token(token).encode("ascii"))


@implementer(IAgent)
@attrs.frozen
class _Bearing:
    agent: IAgent
    authorization: bytes

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        headers = Headers() if headers is None else headers.copy()
        headers.setRawHeaders(b"authorization", [self.authorization])
        return self.agent.request(method, uri, headers, bodyProducer)
