"""docker/k8s/: every manifest validates against the Kubernetes schemas (bundled, offline), strictly,
and the pieces fit together: probes, GPU limits, drain time, selectors, autoscaling metric.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_helpers import drain_seconds
from processes import REPO

from service.metrics import Metrics

# The oldest Kubernetes release the manifests are checked against (autoscaling/v2 and policy/v1 are GA there).
KUBERNETES = "1.30.0"
MANIFESTS = sorted((REPO / "docker/k8s").glob("*.yaml"))


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents() if doc["kind"] == kind]
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: Path(p).name)
def test_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_validation_is_real() -> None:
    """The same validator refuses a broken copy, so a pass above means something."""
    broken = copy.deepcopy(by_kind("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_deployment_asks_for_a_gpu_and_probes_the_right_endpoints() -> None:
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    environment = {e["name"]: e["value"] for e in container["env"]}
    assert pod["terminationGracePeriodSeconds"] > drain_seconds(environment)
    assert environment["DENSEPRED_HOST"] == "0.0.0.0"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[environment["DENSEPRED_MODEL_DIR"]]["readOnly"] is True
    assert "/tmp" in mounts, "a writable /tmp, since the root file system is read-only"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    port_names = {p["name"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names


def test_service_and_autoscaler_point_at_the_deployment() -> None:
    deployment, service, hpa = by_kind("Deployment"), by_kind("Service"), by_kind("HorizontalPodAutoscaler")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    exported = Metrics(["detect"]).render().decode()
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Pods":
            assert f"\n{metric['pods']['metric']['name']}{{" in exported
