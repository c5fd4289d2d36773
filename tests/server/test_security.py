"""TLS (server certificate; client certificates) and the bearer token, with credentials made here (issue 6)."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.client import Client
from server.repository import load_manifest
from tests.server.certs import make_credentials
from tests.server.conftest import running_server
from tests.server.helpers import images, png


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return make_credentials(tmp_path_factory.mktemp("tls"))


def test_tls_server_certificate(tiny_repo, creds):
    with running_server(tiny_repo, tls_cert=str(creds["server.pem"]), tls_key=str(creds["server.key"])) as (_, target):
        with Client(target, tls_ca=creds["ca.pem"].read_bytes(), server_name="localhost") as c:
            assert c.classify(images(1)[0]).class_name
        with Client(target, timeout_s=3) as plain:  # a plaintext client cannot talk to a TLS-only server
            with pytest.raises(grpc.RpcError) as e:
                plain.classify(images(1)[0])
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(tiny_repo, creds):
    with running_server(tiny_repo, tls_cert=str(creds["server.pem"]), tls_key=str(creds["server.key"]),
                        tls_client_ca=str(creds["ca.pem"])) as (_, target):
        ca = creds["ca.pem"].read_bytes()
        with Client(target, tls_ca=ca, client_cert=creds["client.pem"].read_bytes(),
                    client_key=creds["client.key"].read_bytes(), server_name="localhost") as c:
            assert c.classify(images(1)[0]).class_name
        with Client(target, tls_ca=ca, server_name="localhost", timeout_s=3) as anonymous:
            with pytest.raises(grpc.RpcError) as e:
                anonymous.classify(images(1)[0])
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bearer_token(tiny_repo):
    with running_server(tiny_repo, auth_token="s3cret-token") as (_, target):
        with Client(target, token="s3cret-token") as c:
            assert c.classify(images(1)[0]).class_name
            assert c.model_info().name == "tiny"
        for token in (None, "wrong"):
            with Client(target, token=token) as c:
                with pytest.raises(grpc.RpcError) as e:
                    c.classify(images(1)[0])
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "bearer token" in e.value.details()
        channel = grpc.insecure_channel(target)  # health probes carry no credentials and stay open
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        channel.close()


def test_unknown_model_name_is_bounded_in_metrics_and_message(server):
    app, target = server
    with Client(target) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.classify(images(1)[0], model="x" * 5000)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and len(e.value.details()) < 200
    from tests.server.test_serving import scrape

    text = scrape(app)
    assert "x" * 70 not in text and 'model="_unknown"' in text


def test_client_command_speaks_tls_and_the_token(tiny_repo, creds, tmp_path, capsys):
    from server.client import main as client_main

    image = tmp_path / "x.png"
    image.write_bytes(png(images(1)[0]))
    (tmp_path / "token").write_text("s3cret-token\n")
    (tmp_path / "empty").write_text("")
    with running_server(tiny_repo, tls_cert=str(creds["server.pem"]), tls_key=str(creds["server.key"]),
                        auth_token="s3cret-token") as (_, target):
        tls = ["--target", target, "--tls-ca", str(creds["ca.pem"]), "--server-name", "localhost"]
        assert client_main([*tls, "--token-file", str(tmp_path / "token"), "--info", str(image)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("tiny version ") and f"{image}: " in out and " exit " in out
        info = load_manifest(tiny_repo / "tiny")
        assert len([line for line in out.splitlines() if line.split()[:2] == [str(0), str(info.exits[0].layer)]]) == 1
        assert client_main([*tls, str(image)]) == 1  # no token
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert client_main(["--target", target, "--timeout-s", "3", "--token-file", str(tmp_path / "token"), str(image)]) == 1
        assert "UNAVAILABLE" in capsys.readouterr().err  # plaintext to a TLS-only server
    with pytest.raises(SystemExit):
        client_main(["--token-file", str(tmp_path / "empty"), str(image)])
    assert "empty" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--timeout-s", "nan"], "argument --timeout-s: nan must be a number in (0, 86400]"),  # a DEADLINE_EXCEEDED before
    (["--timeout-s", "-1"], "argument --timeout-s: -1 must be a number in (0, 86400]"),
    (["--top-k", "-1"], "argument --top-k: -1 must be >= 0"),  # protobuf's "Value out of range" traceback before
    (["--priority", str(2**32)], f"argument --priority: {2**32} must be <= 4294967295"),
])
def test_client_command_refuses_values_it_cannot_send(argv, says, capsys):
    from server.client import main as client_main

    with pytest.raises(SystemExit) as e:
        client_main(["--target", "127.0.0.1:1", "image.png", *argv])
    assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--images", "missing"], "--images: missing is not a folder of images by class"),  # a FileNotFoundError traceback
    (["--concurrency", "0"], "argument --concurrency: 0 must be >= 1"),
    (["--budget-ms", "nan"], "argument --budget-ms: nan must be a number in (0, 3600000]"),
])
def test_demo_command_names_a_bad_option_before_starting_a_server(argv, says, tmp_path, capsys, monkeypatch):
    from server.demo import main as demo_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        demo_main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err
