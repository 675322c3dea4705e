"""deploy/k8s/components/archive-job: the Indexed Job renders (overlays/archive, with the real kustomize),
validates against the Kubernetes schemas (test_deploy_manifests.py renders it with the other overlays), and
runs one shard per pod against the server's Service, with the shard count the Job runs."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from emotion2vec_serving.clients.cli import build_parser
from tests.support.deploy import K8S, find, kustomize


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return kustomize(K8S / "overlays" / "archive")


def _env(objects: list[dict[str, Any]], job: dict[str, Any]) -> dict[str, str]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    name = container["envFrom"][0]["configMapRef"]["name"]
    return dict(find(objects, "ConfigMap", name)["data"])


def test_one_pod_per_shard(objects: list[dict[str, Any]]) -> None:
    job = find(objects, "Job", "emotion-archive")
    spec = job["spec"]
    env = _env(objects, job)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["SHARDS"]) == 8
    assert spec["template"]["spec"]["restartPolicy"] == "OnFailure"  # a restarted pod resumes its shard
    script = spec["template"]["spec"]["containers"][0]["args"][0]
    assert 'shard="$JOB_COMPLETION_INDEX/$SHARDS"' in script
    assert '--shard "$shard"' in script and "--resume" in script
    assert env["ARCHIVE_INPUT"].startswith("s3://")


def test_the_job_calls_the_servers_service(
    objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = find(objects, "Job", "emotion-archive")
    target = _env(objects, job)["EMOTION_TARGET"]
    host, port = target.removeprefix("dns:///").split(":")
    service = find(objects, "Service", host)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    assert service["metadata"]["namespace"] == job["metadata"]["namespace"]
    # The client takes its --target from EMOTION_TARGET.
    monkeypatch.setenv("EMOTION_TARGET", target)
    assert build_parser().parse_args(["info"]).target == target


def test_results_volume_is_shared_by_the_pods(objects: list[dict[str, Any]]) -> None:
    job = find(objects, "Job", "emotion-archive")
    claim = job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    pvc = find(objects, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for obj in (job, pvc, find(objects, "ConfigMap", job["spec"]["template"]["spec"]["containers"][0]
                                ["envFrom"][0]["configMapRef"]["name"])):
        kubernetes_validate.validate(obj, "1.33", strict=True)
