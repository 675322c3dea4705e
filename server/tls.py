"""TLS for both front ends (gRPC and HTTP): the operator's PEM files, checked, and re-read when they change.

Standard library only; the gRPC credentials built from these files are in ``server/grpc/credentials.py``.

- :func:`read_pem` reads one PEM file named by the operator, with a message that says which setting is wrong.
- :func:`check_pair` refuses half a configuration (a certificate without its key, a client CA without a
  server certificate) rather than silently serving plaintext.
- :class:`CertificateFiles` holds the certificate, key and client CA and re-reads them when they change (a
  cert-manager renewal, a re-mounted Secret), so new connections get the new certificate without a restart.
- :func:`server_ssl_context` is the HTTP listener's ``ssl.SSLContext`` from the same files, rotated the same
  way (:class:`RotatingServerContext`).

Nothing here ever uses a value sent by a client as a path: file paths come from the operator's settings only.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CertificateFiles",
    "CertificateSet",
    "RotatingServerContext",
    "SecurityConfigError",
    "check_pair",
    "read_pem",
    "server_ssl_context",
]

_MAX_PEM_BYTES = 1 << 20

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class SecurityConfigError(ValueError):
    """The operator's security settings are unusable (missing file, half a key pair, no tokens)."""


def read_pem(path: PathLike, what: str) -> bytes:
    """Reads a PEM file named by the operator; fails with a message that says which setting is wrong."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the {what} file {str(p)!r}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_PEM_BYTES:
        raise SecurityConfigError(
            f"the {what} file {str(p)!r} is {len(data)} bytes; a PEM file is far smaller"
        )
    if b"-----BEGIN " not in data:
        raise SecurityConfigError(f"the {what} file {str(p)!r} is not PEM (no '-----BEGIN' line)")
    return data


def check_pair(cert_file: PathLike | None, key_file: PathLike | None,
               client_ca_file: PathLike | None) -> bool:
    """Whether TLS is configured (``False``: plaintext); :class:`SecurityConfigError` for half a setup."""
    if not cert_file and not key_file:
        if client_ca_file:
            raise SecurityConfigError(
                "a client CA (mutual TLS) needs a server certificate and key as well; "
                "set the TLS certificate and key files too"
            )
        return False
    if not cert_file or not key_file:
        missing = "certificate" if not cert_file else "private key"
        raise SecurityConfigError(
            f"TLS needs both a certificate and a private key; the {missing} file is not set"
        )
    return True


@dataclass(frozen=True)
class CertificateSet:
    """One consistent set of PEM bytes: the certificate chain, its key and (mutual TLS) the client CA."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    #: The same set as a server-side ``ssl.SSLContext`` (client certificates required with a client CA):
    #: the one the files were checked with, so it holds exactly these bytes.
    context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


class CertificateFiles:
    """The server's certificate, key and client CA files, re-read when they change.

    :meth:`fetch` (gRPC calls it before each TLS handshake of a new connection) answers ``None`` (keep the
    current certificates) unless a file's identity changed (inode, size, modification time: a Kubernetes
    Secret update swaps a symlink, cert-manager rewrites the files). A changed set is served only once it is
    complete and consistent: a certificate that does not match its key (the files caught mid-rotation) or a
    file that is not PEM leaves the previous certificates in place, and the next handshake looks again.
    """

    def __init__(self, cert_file: PathLike, key_file: PathLike,
                 client_ca_file: PathLike | None = None) -> None:
        self._paths = [Path(cert_file), Path(key_file)] + ([Path(client_ca_file)] if client_ca_file else [])
        self._lock = threading.Lock()
        self.reloads = 0
        stamp = self._stamp()
        loaded = self._load()
        if isinstance(loaded, str):
            raise SecurityConfigError(loaded)
        self._stamp_seen = stamp
        self.initial: CertificateSet = loaded

    def _stamp(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in self._paths:
            try:
                st = path.stat()
            except OSError:
                out.append((-1, -1, -1))
            else:
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def _load(self) -> CertificateSet | str:
        """A certificate set, or a message saying why the files cannot be used (yet)."""
        try:
            pems = [read_pem(p, what) for p, what in
                    zip(self._paths, ("TLS certificate", "TLS private key", "client CA"), strict=False)]
        except SecurityConfigError as exc:
            return str(exc)
        try:
            # The standard library checks that the key belongs to the certificate.
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._paths[0], self._paths[1])
        except (ssl.SSLError, OSError) as exc:
            return (f"the TLS certificate {str(self._paths[0])!r} and key {str(self._paths[1])!r} do not "
                    f"belong together or cannot be loaded: {exc}")
        client_ca = pems[2] if len(pems) > 2 else None
        if client_ca is not None:
            try:
                context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as exc:
                return f"the client CA file {str(self._paths[2])!r} holds no usable certificate: {exc}"
            context.verify_mode = ssl.CERT_REQUIRED
        cert, key = pems[0], pems[1]
        try:
            reread = [read_pem(p, "TLS file") for p in self._paths[:2]]
        except SecurityConfigError as exc:
            return str(exc)
        if reread != [cert, key]:
            return "the TLS files changed while they were being read"
        return CertificateSet(cert, key, client_ca, context)

    def fetch(self) -> CertificateSet | None:
        """A new certificate set when the files changed and are usable, or None to keep the current one."""
        stamp = self._stamp()
        if stamp == self._stamp_seen:
            return None
        with self._lock:
            if stamp == self._stamp_seen:
                return None
            loaded = self._load()
            if isinstance(loaded, str):
                log.warning("keeping the current TLS certificate: %s", loaded)
                return None
            self._stamp_seen = stamp
            self.reloads += 1
        log.info("TLS certificate reloaded from %s", self._paths[0])
        return loaded


class RotatingServerContext:
    """A listener's ``ssl.SSLContext`` whose certificate, key and client CA follow the files.

    :attr:`context` is what the listener is given; its SNI callback, which OpenSSL runs on every ClientHello
    (with or without a server name), asks :meth:`CertificateFiles.fetch` whether the files changed (the same
    check gRPC runs before each handshake) and moves the handshake onto the newest context. OpenSSL then
    takes that context's certificate and its client-CA store for the handshake: a new connection sees the
    new certificate and is verified against the new client CA; connections already open keep theirs.
    An unusable set of files (mid-rotation) keeps the previous context.
    """

    def __init__(self, files: CertificateFiles) -> None:
        self.files = files
        initial = files.initial.context
        assert initial is not None
        self.current: ssl.SSLContext = initial
        self.context = initial  # the listener's; the first set's own
        self.context.sni_callback = self._on_client_hello

    def _on_client_hello(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                         context: ssl.SSLContext) -> int | None:
        try:
            certs = self.files.fetch()
            if certs is not None and certs.context is not None:
                self.current = certs.context
            if self.current is not context:
                connection.context = self.current
        except Exception:  # never fail a handshake over a reload: keep what it has
            log.exception("TLS certificate reload failed; keeping the current certificate")
        return None


def server_ssl_context(cert_file: PathLike | None, key_file: PathLike | None,
                       client_ca_file: PathLike | None = None) -> ssl.SSLContext | None:
    """TLS for the HTTP port from the gRPC port's PEM files (client certificates required when a client CA
    is set), re-read when they change (:class:`RotatingServerContext`); ``None`` for plaintext. The same
    checks and messages as the gRPC port."""
    if not check_pair(cert_file, key_file, client_ca_file):
        return None
    assert cert_file and key_file
    return RotatingServerContext(CertificateFiles(cert_file, key_file, client_ca_file or None)).context
