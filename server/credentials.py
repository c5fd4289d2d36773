"""TLS certificates and the bearer token, read again when their files change: rotation without a restart.

Why: certificates expire (cert-manager's last 90 days and are renewed at 60), and a token leaks or is rotated
on schedule. A server that reads its credentials once serves an expired certificate until someone restarts
it. Kubernetes updates a mounted secret by swapping a symlink, so a file is recognised as changed by what its
path resolves to now (inode, device, modification time, size), not by its name.

Every `--poll-s` the server calls `refresh()`. New files are read, checked (the key matches the certificate,
the CA parses, the token is not empty) and only then used; a bad set is refused with one ERROR log line and
the credentials in use stay. A set caught mid-rotation (a file changed while being read, or a certificate
that does not match the key yet) is simply tried again at the next poll: the refusal is logged once per set of
files seen. Connections already open keep the credentials they were made with.

- gRPC: `grpc.dynamic_ssl_server_credentials`, whose fetcher gRPC calls at each new connection; it hands
  over the new certificate, key and client CA when there are some.
- HTTP (aiohttp): the listening socket's context hands each new connection to a whole new `ssl.SSLContext`
  per rotation, the one OpenSSL checked while the files were read (`FollowingContext`). Why not load new
  files into one live context, as this did until 2026-12-01: OpenSSL can add a CA to a context but never
  remove one, and a context's session cache lets a client resume a session it made before. Rotating a
  compromised client CA out left it trusted on this side until a restart, and a client of the removed CA
  could still resume its session (TLS 1.2; tests/server/test_credential_rotation.py). A new context has
  neither the old CA nor the old sessions: a session made before a rotation is not resumed after it.
"""

from __future__ import annotations

import base64
import calendar
import hmac
import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger("auxnet.server")
EXPIRY_WARNING_S = 14 * 86400  # warn at start-up and at each reload when the certificate expires sooner


def _stamps(paths: list[str]) -> tuple:
    """What each path resolves to now; os.stat follows the symlinks a Kubernetes secret mount swaps."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def certificate_not_after(pem: bytes) -> float:
    """When the first certificate of a PEM chain (the server's own) expires, as a Unix time. Read from its DER
    with a minimal walk (Certificate -> tbsCertificate -> validity -> notAfter): the ssl module has no public
    reader and the serving side does not depend on `cryptography`."""
    text = pem.decode("ascii", "replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in text or end not in text:
        raise ValueError("no PEM certificate")
    der = base64.b64decode("".join(text.split(begin, 1)[1].split(end, 1)[0].split()))
    certificate = _der_elements(der)[0][1]  # Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, ... }
    fields = _der_elements(_der_elements(certificate)[0][1])
    if fields and fields[0][0] == 0xA0:  # [0] version, present from X.509 v2 on
        fields = fields[1:]
    validity = _der_elements(fields[3][1])  # serialNumber, signature, issuer, validity
    tag, value = validity[1]
    when = value.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: years 50-99 are 19xx (RFC 5280)
        when = ("19" if int(when[:2]) >= 50 else "20") + when
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError(f"notAfter has ASN.1 tag {tag:#x}, not a time")
    return calendar.timegm(time.strptime(when[:14], "%Y%m%d%H%M%S"))


def _der_elements(content: bytes) -> list[tuple[int, bytes]]:
    """(tag, content) of each DER element lying one after another in `content`."""
    out, i = [], 0
    while i < len(content):
        tag, length, i = content[i], content[i + 1], i + 2
        if length & 0x80:  # long form: the next (length & 0x7f) bytes hold the length
            n = length & 0x7F
            length, i = int.from_bytes(content[i:i + n], "big"), i + n
        if i + length > len(content):
            raise ValueError("truncated DER")
        out.append((tag, content[i:i + length]))
        i += length
    return out


class _Changing(Exception):
    """A file changed while it was read: try again at the next poll."""


class _Watched:
    """What a set of watched files refused last, so that one refusal is logged once, not at every poll."""

    _refused: tuple | None = None

    def _refuse(self, stamps: tuple, what: str, why: str) -> bool:
        if stamps != self._refused:
            log.error("keeping the %s in use: %s", what, why)
        self._refused = stamps
        return False

    def _current_stamps(self, paths: list[str]) -> tuple:
        """The paths' stamps, or a marker of the missing file (a refusal logged once while it stays missing)."""
        try:
            return _stamps(paths)
        except OSError as e:
            return ("missing", e.filename, e.strerror)


@dataclass(frozen=True)
class TlsMaterial:
    cert: bytes
    key: bytes
    ca: bytes | None
    stamps: tuple
    not_after: float | None  # the server certificate's expiry (Unix time); None if it could not be read
    context: ssl.SSLContext | None = None  # the HTTP side's, built from these very files (None in unit tests)

    def expiry_warning(self, now: float | None = None) -> str | None:
        """A line for the log when the certificate has expired or will within EXPIRY_WARNING_S."""
        if self.not_after is None:
            return None
        left = self.not_after - (time.time() if now is None else now)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.not_after))
        if left <= 0:
            return f"the TLS certificate expired at {when}: clients will refuse it; renew it (it is reloaded on change)"
        if left <= EXPIRY_WARNING_S:
            return f"the TLS certificate expires at {when}, in {left / 86400:.1f} days; renew it (it is reloaded on change)"
        return None


class TlsFiles(_Watched):
    """The server's certificate chain, its key and (mutual TLS) the client CA, from files."""

    def __init__(self, cert: str, key: str, ca: str | None = None):
        if not (cert and key):  # an empty name too: serving plain text where TLS was asked for would be silent
            what = "mutual TLS (--tls-client-ca)" if ca is not None else "TLS"
            raise ValueError(f"{what} needs both a certificate (--tls-cert) and its private key (--tls-key); given: "
                             f"--tls-cert {cert!r}, --tls-key {key!r}")
        if ca is not None and not ca:
            raise ValueError("--tls-client-ca '' names no file: mutual TLS needs the CA that signs the clients' certificates")
        self.cert_path, self.key_path, self.ca_path = cert, key, ca
        self.paths = [p for p in (cert, key, ca) if p]
        try:
            self.material = self._read()
        except _Changing as e:
            raise ValueError(f"TLS files changed while being read at start-up: {e}") from e
        self.generation = 0  # incremented at each rotation; gRPC's fetcher compares it with what it last gave

    def _read(self) -> TlsMaterial:
        try:
            before = _stamps(self.paths)
            cert, key = Path(self.cert_path).read_bytes(), Path(self.key_path).read_bytes()
            ca = Path(self.ca_path).read_bytes() if self.ca_path else None
            context = self._server_context()  # OpenSSL's own check: certificate and key parse and match, the CA parses
            after = _stamps(self.paths)
        except ssl.SSLError as e:  # before OSError, of which it is a subclass
            raise ValueError(f"cannot use TLS files {', '.join(self.paths)}: {e}") from e
        except OSError as e:
            raise ValueError(f"cannot read TLS file {e.filename}: {e.strerror}") from e
        if before != after:
            raise _Changing(", ".join(self.paths))
        try:
            not_after = certificate_not_after(cert)
        except (ValueError, IndexError, UnicodeDecodeError):  # OpenSSL accepted it: a reader's gap, not a bad file
            not_after = None
        return TlsMaterial(cert, key, ca, after, not_after, context)

    def _server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        if self.ca_path:
            ctx.load_verify_locations(self.ca_path)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def refresh(self) -> bool:
        """Read the files again if they changed; True when new credentials are now in use."""
        stamps = self._current_stamps(self.paths)
        if stamps == self.material.stamps or stamps == self._refused:
            return False
        if stamps[0] == "missing":
            return self._refuse(stamps, "TLS credentials", f"cannot read TLS file {stamps[1]}: {stamps[2]}")
        try:
            material = self._read()
        except _Changing:
            return False
        except ValueError as e:
            return self._refuse(stamps, "TLS credentials", str(e))
        self.material, self._refused = material, None  # the HTTP side's next handshake takes material.context
        self.generation += 1
        log.info("TLS credentials reloaded from %s (rotation %d)", ", ".join(self.paths), self.generation)
        return True

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials whose certificate gRPC fetches again at each new connection when it changed."""
        given = [self.generation]

        def fetch():  # called by gRPC core at each new connection; None: keep the configuration it has
            if given[0] == self.generation:
                return None
            given[0] = self.generation
            return self._grpc_configuration()

        return grpc.dynamic_ssl_server_credentials(self._grpc_configuration(), fetch,
                                                   require_client_authentication=self.ca_path is not None)

    def _grpc_configuration(self):
        m = self.material
        return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], root_certificates=m.ca)

    def ssl_context(self) -> ssl.SSLContext:
        """The context the HTTP side listens with: every connection made by the credentials in use."""
        front = FollowingContext(ssl.PROTOCOL_TLS_SERVER)
        front.files = self
        return front


class FollowingContext(ssl.SSLContext):
    """A server context that makes each connection with `files.material.context`, the context of the TLS files
    in use when the connection arrives. asyncio makes a server connection's TLS object with the
    listening context's `wrap_bio`, so the listening socket keeps this one object and each rotation still
    takes effect whole: certificate, key, client CAs and session cache. Its own settings are never used."""

    files: TlsFiles

    def wrap_bio(self, *args, **kwargs) -> ssl.SSLObject:
        return self.files.material.context.wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args, **kwargs) -> ssl.SSLSocket:  # a blocking server given this context
        return self.files.material.context.wrap_socket(*args, **kwargs)


class BearerToken(_Watched):
    """The token requests must carry, from a string (fixed) or a file (read again when it changes)."""

    def __init__(self, token: str | None = None, path: str | None = None):
        self.path = path
        if path is not None:
            try:
                token, self.stamps = self._read()
            except _Changing as e:
                raise ValueError(f"token file {e} changed while being read at start-up") from e
        if not token:
            raise ValueError("the bearer token is empty")
        if path is None:  # a file's token was checked as it was read (_read), for rotation too
            _check_header_safe(token, "the bearer token")
        self.expected = f"Bearer {token}".encode()

    def _read(self) -> tuple[str, tuple]:
        try:
            before = _stamps([self.path])
            token = Path(self.path).read_text().strip()
            after = _stamps([self.path])
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read token file {self.path}: {e}") from e
        if not token:
            raise ValueError(f"token file {self.path} is empty")
        _check_header_safe(token, f"the token in {self.path}")
        if before != after:
            raise _Changing(self.path)
        return token, after

    def matches(self, header: str | bytes) -> bool:
        """Constant-time comparison of an `authorization` value with `Bearer <token>`."""
        got = header.encode("utf-8", "replace") if isinstance(header, str) else header
        return hmac.compare_digest(got, self.expected)

    def refresh(self) -> bool:
        """Read the token file again if it changed; True when the new token is now required."""
        if self.path is None:
            return False
        stamps = self._current_stamps([self.path])
        if stamps == self.stamps or stamps == self._refused:
            return False
        if stamps[0] == "missing":
            return self._refuse(stamps, "bearer token", f"cannot read token file {stamps[1]}: {stamps[2]}")
        try:
            token, self.stamps = self._read()
        except _Changing:
            return False
        except ValueError as e:
            return self._refuse(stamps, "bearer token", str(e))
        self.expected, self._refused = f"Bearer {token}".encode(), None
        log.info("bearer token reloaded from %s", self.path)
        return True


def _check_header_safe(token: str, what: str) -> None:
    """A token no client can send is refused: an `authorization` value is visible ASCII (HTTP and gRPC headers carry
    nothing else), and a space or line break inside would have to be part of it."""
    bad = next((i for i, c in enumerate(token) if not "!" <= c <= "~"), None)
    if bad is not None:
        raise ValueError(f"{what} holds {token[bad]!r} at character {bad + 1}: a bearer token is one word of visible "
                         f"ASCII (no space, line break or other character), or no client could send it")
