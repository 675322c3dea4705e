"""The gRPC port's TLS credentials from the operator's PEM files (see ``server/tls.py``).

``grpc.dynamic_ssl_server_credentials`` asks :class:`~emotion2vec_serving.server.tls.CertificateFiles` for a
new certificate before each TLS handshake of a new connection: a rotated certificate is served to new
connections without a restart; connections already open keep theirs.
"""

from __future__ import annotations

from typing import Any

import grpc

from emotion2vec_serving.server.tls import CertificateFiles, CertificateSet, PathLike, check_pair

__all__ = ["server_credentials"]


def _configuration(certs: CertificateSet) -> Any:
    return grpc.ssl_server_certificate_configuration([(certs.key, certs.cert)],
                                                     root_certificates=certs.client_ca)


def server_credentials(
    cert_file: PathLike | None,
    key_file: PathLike | None,
    client_ca_file: PathLike | None = None,
) -> grpc.ServerCredentials | None:
    """Server credentials from PEM paths, or ``None`` when no certificate is configured (plaintext).

    - certificate + key: TLS.
    - certificate + key + client CA: mutual TLS; clients must present a certificate signed by that CA
      (``require_client_auth=True``), otherwise the handshake fails before any RPC runs.

    Raises :class:`~emotion2vec_serving.server.tls.SecurityConfigError` for half a configuration and for a
    certificate and key that do not belong together.
    """
    if not check_pair(cert_file, key_file, client_ca_file):
        return None
    assert cert_file and key_file
    files = CertificateFiles(cert_file, key_file, client_ca_file or None)

    def fetch() -> Any:
        certs = files.fetch()
        return None if certs is None else _configuration(certs)

    return grpc.dynamic_ssl_server_credentials(
        _configuration(files.initial), fetch, require_client_authentication=bool(client_ca_file)
    )
