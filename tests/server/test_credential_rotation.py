"""TLS files and the token file replaced while the server runs (a certificate renewed, a token rotated): new
connections get the new credentials within a poll, no restart; a bad set is refused and the old one stays."""

import datetime
import logging
import os
import re
import socket
import ssl
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.client import Client
from server.credentials import TlsMaterial, certificate_not_after
from tests.server.certs import make_credentials
from tests.server.conftest import running_server
from tests.server.helpers import images, png, wait_for
from tests.server.v2_helpers import http

POLL_S = 0.05


def grpc_ok(target: str, ca: bytes) -> bool:
    """A health check over a new TLS connection that trusts `ca` only."""
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca),
                                  options=[("grpc.ssl_target_name_override", "localhost"),
                                           ("grpc.use_local_subchannel_pool", 1)])  # a connection of its own
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        return True
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, e  # the handshake failed, nothing else
        return False
    finally:
        channel.close()


def https_ok(url: str, ca_file) -> bool:
    """GET /v2/health/live over a new TLS connection that trusts `ca_file` only."""
    try:
        return http(f"https://{url}/v2/health/live", context=ssl.create_default_context(cafile=str(ca_file)))[0] == 200
    except OSError:  # urllib's URLError wraps the certificate failure
        return False


def kubernetes_mount(folder, creds):
    """A Kubernetes secret volume: `name -> ..data/name`, `..data -> <timestamped folder>`, swapped in one rename."""
    data = folder / "v1"
    data.mkdir(parents=True)
    for name in ("server.pem", "server.key"):
        (data / name).write_bytes(creds[name].read_bytes())
        os.symlink(f"..data/{name}", folder / name)
    os.symlink("v1", folder / "..data")
    return folder


def swap(folder, creds, version: str):
    data = folder / version
    data.mkdir()
    for name in ("server.pem", "server.key"):
        (data / name).write_bytes(creds[name].read_bytes())
    os.symlink(version, folder / "..tmp")
    os.replace(folder / "..tmp", folder / "..data")  # the atomic swap kubelet does


def test_a_renewed_certificate_is_served_to_new_connections_on_both_sides(tiny_repo, tmp_path):
    old, new = make_credentials(_dir(tmp_path / "old")), make_credentials(_dir(tmp_path / "new"))
    mount = kubernetes_mount(tmp_path / "mount", old)
    with running_server(tiny_repo, tls_cert=str(mount / "server.pem"), tls_key=str(mount / "server.key"),
                        poll_s=POLL_S) as (app, target):
        url = f"localhost:{app.http_port}"
        assert grpc_ok(target, old["ca.pem"].read_bytes()) and https_ok(url, old["ca.pem"])
        assert not grpc_ok(target, new["ca.pem"].read_bytes())
        # A client already connected keeps its connection across the rotation: none of its calls fails.
        stop, results = threading.Event(), []

        def steady_client():
            with Client(target, tls_ca=old["ca.pem"].read_bytes(), server_name="localhost") as c:
                image = png(images(1)[0])
                while not stop.is_set():
                    try:
                        results.append(bool(c.classify(image).class_name))
                    except grpc.RpcError as e:
                        results.append(e.code().name)

        steady = threading.Thread(target=steady_client)
        steady.start()
        assert wait_for(lambda: len(results) >= 5, timeout_s=10)
        swap(mount, new, "v2")
        assert wait_for(lambda: grpc_ok(target, new["ca.pem"].read_bytes()), timeout_s=10)
        during = len(results)
        assert wait_for(lambda: len(results) >= during + 5, timeout_s=10)
        stop.set()
        steady.join(10)
        assert all(r is True for r in results), [r for r in results if r is not True][:3]
        assert https_ok(url, new["ca.pem"]) and not https_ok(url, old["ca.pem"])
        assert not grpc_ok(target, old["ca.pem"].read_bytes())
        assert app.tls.generation == 1


def client_context(server_ca, client, version=ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    """A client's TLS context with its certificate. TLS 1.2 by default: a refusal then fails the handshake (in TLS
    1.3 the server checks the client certificate after the client thinks the handshake done, so a refusal shows
    as a closed connection)."""
    ctx = ssl.create_default_context(cafile=str(server_ca))
    ctx.load_cert_chain(client["client.pem"], client["client.key"])
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def https_client(url: str, ctx: ssl.SSLContext, session=None):
    """(HTTP status line or why the connection failed, the TLS session, whether it was resumed) of GET
    /v2/health/live over a new connection, resuming `session` (made with the same `ctx`) if given."""
    host, port = url.split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=host, session=session) as tls:
            tls.sendall(f"GET /v2/health/live HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := tls.recv(4096):
                reply += chunk
            return reply.split(b"\r\n")[0].decode() or "closed", tls.session, tls.session_reused
    except (ssl.SSLError, ConnectionError) as e:
        return f"refused: {type(e).__name__}", None, False


def test_a_client_ca_rotated_out_is_refused_on_both_sides_and_its_sessions_are_not_resumed(tiny_repo, tmp_path):
    """Mutual TLS: the client CA file trusted two CAs, then one was rotated out (say it leaked). New connections
    of its clients are refused on gRPC and HTTP alike, and so is an HTTP client resuming a TLS session it made
    before the rotation; the other CA's clients go on. Before 2026-12-01 the HTTP side kept trusting the
    removed CA until a restart, and resumed the old session."""
    server = make_credentials(_dir(tmp_path / "server"), ca_name="server CA")
    one, two = (make_credentials(_dir(tmp_path / name), ca_name=f"client CA {name}") for name in ("one", "two"))
    client_cas = tmp_path / "client-ca.pem"
    replace(client_cas, one["ca.pem"].read_bytes() + two["ca.pem"].read_bytes())
    with running_server(tiny_repo, tls_cert=str(server["server.pem"]), tls_key=str(server["server.key"]),
                        tls_client_ca=str(client_cas), poll_s=POLL_S) as (app, target):
        url, server_ca = f"localhost:{app.http_port}", server["ca.pem"]

        def grpc_client_ok(client) -> bool:
            with Client(target, tls_ca=server_ca.read_bytes(), client_cert=client["client.pem"].read_bytes(),
                        client_key=client["client.key"].read_bytes(), server_name="localhost", timeout_s=3) as c:
                try:
                    return bool(c.model_info().name)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE, e  # the handshake failed, nothing else
                    return False

        ctx_one, ctx_two = client_context(server_ca, one), client_context(server_ca, two)
        status, session, _ = https_client(url, ctx_one)
        assert status == "HTTP/1.1 200 OK" and session is not None
        status, session, reused = https_client(url, ctx_one, session=session)
        assert (status, reused) == ("HTTP/1.1 200 OK", True)  # sessions are resumed while nothing changes
        assert https_client(url, ctx_two)[0] == "HTTP/1.1 200 OK"
        assert grpc_client_ok(one) and grpc_client_ok(two)

        replace(client_cas, two["ca.pem"].read_bytes())  # CA one rotated out
        assert wait_for(lambda: app.tls.generation == 1, timeout_s=10)
        assert https_client(url, ctx_one, session=session)[0].startswith("refused")
        assert https_client(url, ctx_one)[0].startswith("refused")
        tls13 = ssl.TLSVersion.TLSv1_3
        assert https_client(url, client_context(server_ca, one, tls13))[0] in ("closed", "refused: SSLError")
        assert https_client(url, ctx_two)[0] == "HTTP/1.1 200 OK"
        assert https_client(url, client_context(server_ca, two, tls13))[0] == "HTTP/1.1 200 OK"
        assert not grpc_client_ok(one) and grpc_client_ok(two)


def test_a_certificate_that_does_not_match_its_key_is_refused_and_the_old_one_kept(tiny_repo, tmp_path, caplog):
    old, new = make_credentials(_dir(tmp_path / "old")), make_credentials(_dir(tmp_path / "new"))
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    replace(cert, old["server.pem"].read_bytes())
    replace(key, old["server.key"].read_bytes())
    with running_server(tiny_repo, tls_cert=str(cert), tls_key=str(key), poll_s=POLL_S, http_port=None) as (app, target):
        with caplog.at_level(logging.ERROR, logger="auxnet.server"):
            replace(cert, new["server.pem"].read_bytes())  # the key still the old one: half a rotation
            assert wait_for(lambda: "keeping the TLS credentials in use" in caplog.text, timeout_s=10)
            assert grpc_ok(target, old["ca.pem"].read_bytes()) and not grpc_ok(target, new["ca.pem"].read_bytes())
            refusals = caplog.text.count("keeping the TLS credentials in use")
            assert wait_for(lambda: False, timeout_s=10 * POLL_S) is False
            assert caplog.text.count("keeping the TLS credentials in use") == refusals == 1  # logged once per file set
            replace(key, new["server.key"].read_bytes())  # the rotation completed
            assert wait_for(lambda: grpc_ok(target, new["ca.pem"].read_bytes()), timeout_s=10)
        os.remove(key)  # a file gone: refused, still serving what it has
        with caplog.at_level(logging.ERROR, logger="auxnet.server"):
            assert wait_for(lambda: "cannot read TLS file" in caplog.text, timeout_s=10)
        assert grpc_ok(target, new["ca.pem"].read_bytes())


def test_a_rotated_token_file_takes_over_on_both_sides(tiny_repo, tmp_path, caplog):
    token = tmp_path / "token"
    token.write_text("first-token\n")
    with running_server(tiny_repo, auth_token_file=str(token), poll_s=POLL_S) as (app, target):
        url = f"127.0.0.1:{app.http_port}/v2/models/tiny"

        def grpc_accepts(t):
            with Client(target, token=t) as c:
                try:
                    return bool(c.model_info().name)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
                    return False

        def http_accepts(t):
            return http(f"http://{url}", headers={"Authorization": f"Bearer {t}"})[0] == 200

        assert grpc_accepts("first-token") and http_accepts("first-token") and not grpc_accepts("second-token")
        replace(token, b"second-token\n")
        assert wait_for(lambda: grpc_accepts("second-token"), timeout_s=10)
        assert http_accepts("second-token") and not http_accepts("first-token") and not grpc_accepts("first-token")
        with caplog.at_level(logging.ERROR, logger="auxnet.server"):
            replace(token, b"  \n")  # emptied by mistake: refused, the token in use stays
            assert wait_for(lambda: "keeping the bearer token in use" in caplog.text, timeout_s=10)
            caplog.clear()
            replace(token, b"third-token\nfourth\n")  # two lines: no client could send it; refused the same way
            assert wait_for(lambda: "keeping the bearer token in use" in caplog.text, timeout_s=10)
            assert "holds '\\n' at character 12" in caplog.text
        assert grpc_accepts("second-token")
        with Client(target, token="second-token") as c:
            assert c.classify(images(1)[0]).class_name


def test_start_up_refuses_an_empty_token_file_and_a_key_that_is_not_the_certificates(tiny_repo, tmp_path):
    from server.app import ServerApp, ServerConfig

    (tmp_path / "empty").write_text("\n")
    (tmp_path / "two-lines").write_text("first-half\nsecond-half\n")  # e.g. a whole file named by mistake
    creds = make_credentials(_dir(tmp_path / "a"))
    other = make_credentials(_dir(tmp_path / "b"))
    for kwargs, says in (({"auth_token_file": str(tmp_path / "empty")}, "is empty"),
                         ({"tls_cert": str(creds["server.pem"]), "tls_key": str(other["server.key"])}, "cannot use TLS files"),
                         ({"tls_cert": str(creds["server.pem"])}, "TLS needs both"),
                         # These three served plain text before, the CA or the empty names ignored without a word:
                         ({"tls_client_ca": str(creds["ca.pem"])}, r"mutual TLS \(--tls-client-ca\) needs both a certificate"),
                         ({"tls_cert": "", "tls_key": ""}, "TLS needs both .*given: --tls-cert '', --tls-key ''"),
                         ({"tls_cert": str(creds["server.pem"]), "tls_key": str(creds["server.key"]), "tls_client_ca": ""},
                          "--tls-client-ca '' names no file"),
                         # and these took a token no client could ever send:
                         ({"auth_token_file": str(tmp_path / "two-lines")}, r"holds '\\n' at character 11: a bearer token is one word"),
                         ({"auth_token": "two words"}, "the bearer token holds ' ' at character 4")):
        app = ServerApp(ServerConfig(repo=str(tiny_repo), port=0, metrics_port=None, http_port=None, **kwargs))
        with pytest.raises(ValueError, match=says):
            import asyncio

            asyncio.run(app.start())


def replace(path, data: bytes):
    """Write a file whole, as rotation tools do (a reader never sees it half written)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _dir(path):
    path.mkdir(parents=True)
    return path


def _self_signed(not_after: datetime.datetime) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expiry test")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(datetime.datetime(2020, 1, 1))
            .not_valid_after(not_after).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("year", [2049, 2051, 2137])  # UTCTime up to 2049, GeneralizedTime from 2050 (RFC 5280)
def test_certificate_expiry_is_read_from_the_der(year):
    from cryptography import x509

    when = datetime.datetime(year, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
    pem = _self_signed(when)
    assert certificate_not_after(pem) == when.timestamp() == x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()
    with pytest.raises(ValueError, match="no PEM certificate"):
        certificate_not_after(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_expiry_warnings_by_hand():
    m = TlsMaterial(b"", b"", None, (), not_after=1_000_000.0)
    assert m.expiry_warning(now=1_000_000.0 - 30 * 86400) is None
    assert "expires at 1970-01-12 13:46:40 UTC, in 3.0 days" in m.expiry_warning(now=1_000_000.0 - 3 * 86400)
    assert "expired at 1970-01-12 13:46:40 UTC" in m.expiry_warning(now=1_000_001.0)
    assert TlsMaterial(b"", b"", None, (), not_after=None).expiry_warning() is None


def test_the_certificate_in_use_is_a_metric_and_a_near_expiry_a_warning(tiny_repo, tmp_path, caplog):
    from tests.server.test_serving import scrape

    old = make_credentials(_dir(tmp_path / "old"))
    mount = kubernetes_mount(tmp_path / "mount", old)
    with caplog.at_level(logging.WARNING, logger="auxnet.server"):
        with running_server(tiny_repo, tls_cert=str(mount / "server.pem"), tls_key=str(mount / "server.key"),
                            poll_s=POLL_S, http_port=None) as (app, target):
            expiry = lambda: float(re.search(r"^auxnet_tls_certificate_expiry_timestamp_seconds (\S+)$", scrape(app),
                                             re.M).group(1))
            assert expiry() == certificate_not_after(old["server.pem"].read_bytes())
            assert "the TLS certificate expires at" in caplog.text  # the test certificates last one day
            time.sleep(1.1)  # whole seconds: the new certificate expires later than the old
            fresh = make_credentials(_dir(tmp_path / "fresh"))
            swap(mount, fresh, "v2")
            assert wait_for(lambda: expiry() == certificate_not_after(fresh["server.pem"].read_bytes()), timeout_s=10)
            assert expiry() > certificate_not_after(old["server.pem"].read_bytes())
