"""The Kubernetes manifests validate against the API schemas and agree with the server's own flags."""

import json
from pathlib import Path

import pytest
import yaml

from server.__main__ import get_args_parser

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
MANIFESTS = ["deployment.yaml", "service.yaml", "hpa.yaml"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_kubernetes(name):
    import kubernetes_validate

    for doc in yaml.safe_load_all((K8S / name).read_text()):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)  # raises ValidationError with the path


def test_deployment_agrees_with_server_flags():
    deploy = yaml.safe_load((K8S / "deployment.yaml").read_text())
    pod = deploy["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args = get_args_parser().parse_args(container["args"])  # the server accepts every flag
    assert args.host == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == args.health_port != args.port  # probes outside the request limit
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == args.metrics_port
    assert pod["spec"]["terminationGracePeriodSeconds"] > args.grace_s + container["lifecycle"]["preStop"]["sleep"]["seconds"]
    service = yaml.safe_load((K8S / "service.yaml").read_text())
    assert service["spec"]["clusterIP"] == "None"  # headless: clients see every pod
    hpa = next(yaml.safe_load_all((K8S / "hpa.yaml").read_text()))
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    from server.metrics import Metrics

    exported = {m.name for m in Metrics().registry.collect()}
    assert names <= exported, names - exported


def test_dockerfile_command_parses():
    text = (K8S.parent / "Dockerfile").read_text()
    cmd = next(line for line in text.splitlines() if line.startswith("CMD "))
    args = get_args_parser().parse_args(json.loads(cmd[4:]))
    assert args.repo == "/models" and args.host == "0.0.0.0"
