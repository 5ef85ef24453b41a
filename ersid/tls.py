"""
HTTPS for the REST API: a certificate and its key from PEM files, and, if
asked, client certificates required and checked against a CA
(C{--tls-client-ca}), which Twisted's C{ssl:} endpoint strings cannot
express. L{TLSFactory} wraps the API's factory on any endpoint.
"""

from __future__ import annotations

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from ersid.client.tls import pem_certificates
from ersid.files import refuse_if_exposed
from ersid.startup import StartupError

__all__ = ["TLSFactory", "server_tls"]


def _certificates(path: str, what: str) -> list[crypto.X509]:
    try:
        with open(path, "rb") as f:
            found = pem_certificates(f.read())
        certificates = [Certificate.loadPEM(pem).original for pem in found]
    except OSError as e:
        raise StartupError(f"{what} {path}: {e.strerror}") from None
    except crypto.Error:
        raise StartupError(f"{what} {path}: a certificate is damaged") from None
    if not certificates:
        raise StartupError(f"{what} {path}: no PEM certificate in it")
    return certificates


def server_tls(
    certificate: str, key: str, client_ca: str | None = None
) -> CertificateOptions:
    """
    The TLS settings of a server with the certificate (and the chain after
    it) in the PEM file C{certificate} and its private key in C{key},
    which must be mode 0600; requiring a client certificate signed by a CA
    of the PEM file C{client_ca}, if given.

    @raise StartupError: if a file cannot be used, saying which and why.
    """
    chain = _certificates(certificate, "TLS certificate")
    try:
        refuse_if_exposed(key, "TLS key", StartupError)
        with open(key, "rb") as f:
            # No passphrase: OpenSSL would ask for one on the terminal.
            private_key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read(), b"")
    except OSError as e:
        raise StartupError(f"TLS key {key}: {e.strerror}") from None
    except crypto.Error:
        raise StartupError(
            f"TLS key {key}: not a PEM private key without a passphrase "
            "(Ersid asks for none: openssl pkey -in KEY -out NEW decrypts it)"
        ) from None
    trust = None
    if client_ca is not None:
        authorities = _certificates(client_ca, "TLS client CA")
        trust = trustRootFromCertificates([Certificate(ca) for ca in authorities])
    try:
        options = CertificateOptions(
            privateKey=private_key,
            certificate=chain[0],
            extraCertChain=chain[1:],
            trustRoot=trust,
        )
        options.getContext()  # checks that the key is the certificate's
        return options
    except (crypto.Error, SSL.Error, ValueError) as e:
        raise StartupError(
            f"TLS key {key} and certificate {certificate}: {e}"
        ) from None


class TLSFactory(TLSMemoryBIOFactory):
    """
    TLS over C{wrapped}'s connections, server side; a connection the
    wrapped factory refuses (C{None}: the connection budget is spent) is
    refused, where Twisted's own would wrap C{None} and fail.
    """

    def __init__(self, options: CertificateOptions, wrapped: IProtocolFactory) -> None:
        super().__init__(options, False, wrapped)

    def buildProtocol(  # type: ignore[override]
        self, addr: IAddress | None
    ) -> TLSMemoryBIOProtocol | None:
        protocol = self.wrappedFactory.buildProtocol(addr)
        if protocol is None:
            return None
        return self.protocol(self, protocol)
