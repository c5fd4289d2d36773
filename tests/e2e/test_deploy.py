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


def assert_recycling_fits(args, container) -> None:
    """A recycled worker's replacement (~160 MB resident once serving) and the supervisor (~60 MB) must fit beside
    the old worker under the container's memory limit, or the recycle itself gets the pod OOM-killed."""
    limit_mb = int(container["resources"]["limits"]["memory"].removesuffix("Gi")) * 1024
    assert 0 < args.recycle_rss_mb and args.recycle_rss_mb + 256 < limit_mb


def test_deployment_agrees_with_server_flags():
    deploy = yaml.safe_load((K8S / "deployment.yaml").read_text())
    pod = deploy["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args = get_args_parser().parse_args(container["args"])  # the server accepts every flag
    assert args.host == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == args.health_port != args.port  # probes outside the request limit
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == args.metrics_port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.port, "metrics": args.metrics_port, "health": args.health_port, "http": args.http_port}
    assert pod["spec"]["terminationGracePeriodSeconds"] > args.grace_s + container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert_recycling_fits(args, container)
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


def test_dockerfile_model_folders_hold_one_servable_model_each():
    """The image's default repository and the int8 one its header names: the server (no model named in the
    requests) needs exactly one model in /models."""
    import re

    from server.repository import list_models, load_manifest

    text = (K8S.parent / "Dockerfile").read_text()
    folders = re.findall(r"^ARG MODELS=(\S+)$", text, re.M) + re.findall(r"--build-arg MODELS=(\S+)", text)
    assert folders == ["models/repository", "models/repository-int8"]
    root = K8S.parents[1]
    for folder in folders:
        (model,) = list_models(root / folder)
        load_manifest(model)


# KServe's ComponentExtensionSpec (serving.kserve.io/v1beta1): the predictor fields that are not PodSpec.
KSERVE_COMPONENT_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
                           "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "labels",
                           "annotations", "deploymentStrategy", "autoScaling"}


def test_kserve_inferenceservice_is_valid_and_agrees_with_server_flags(tiny_repo):
    """The InferenceService is a custom resource, so its schema is not in kubernetes-validate: the predictor
    (KServe inlines a core v1 PodSpec plus its own component fields) is validated as a Pod, strictly, and its
    probes are called on a real server started with the container's own arguments."""
    import kubernetes_validate

    from tests.server.v2_helpers import http, v2_server

    isvc = yaml.safe_load((K8S / "kserve-inferenceservice.yaml").read_text())
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"  # two ports
    predictor = dict(isvc["spec"]["predictor"])
    component = {k: predictor.pop(k) for k in list(predictor) if k in KSERVE_COMPONENT_FIELDS}
    assert component["minReplicas"] >= 2 and component["maxReplicas"] >= component["minReplicas"]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "auxnet-predictor"},
                                  "spec": predictor}, "1.37.0", strict=True)
    container = predictor["containers"][0]
    assert container["name"] == "kserve-container"  # the name KServe expects of a custom predictor
    args = get_args_parser().parse_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http1": args.http_port, "h2c": args.port, "metrics": args.metrics_port, "health": args.health_port}
    assert predictor["terminationGracePeriodSeconds"] > args.grace_s
    assert_recycling_fits(args, container)
    probes = [container[p]["grpc"] for p in ("readinessProbe", "livenessProbe", "startupProbe")]
    assert all(p["port"] == args.health_port != args.port for p in probes)  # outside the request limit
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with v2_server(tiny_repo, health_port=0) as (app, _, url):
        with grpc.insecure_channel(f"127.0.0.1:{app.health_port}") as channel:
            for p in probes:  # the probed service names exist and serve
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=p.get("service", "")),
                                                                  timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, p
        assert http(f"http://{url}/v2/health/ready")[0] == 200
