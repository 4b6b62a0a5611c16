"""deploy/ and docs/operations.md agree with the code: names of metrics, the stream and its
consumer group, the probe command, and a termination grace above the drain."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric

import worker.metrics  # noqa: F401 - registers the counters
from tests.helpers import REPO
from tests.unit.test_health_assessment import healthy
from worker.config import load_settings
from worker.keys import Keys
from worker.metrics_http import _gauges

DEPLOY = REPO / "deploy"


def exposed_names() -> set[str]:
    """Every family and sample name a worker's /metrics can show."""

    class Fixed:
        def collect(self) -> list[Metric]:
            return list(_gauges(healthy()))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    names: set[str] = {"voicealert_status_reachable"}
    for source in (REGISTRY, registry):
        for family in source.collect():
            names.add(family.name)
            if family.type == "counter":  # a labelled counter shows no sample until used
                names.add(f"{family.name}_total")
            names.update(sample.name for sample in family.samples)
    return names


def test_metric_names_in_the_alert_rules_and_the_guide_exist() -> None:
    exposed = exposed_names()
    for path in (DEPLOY / "prometheus-rules.yaml", REPO / "docs" / "operations.md",
                 DEPLOY / "keda.yaml"):
        mentioned = set(re.findall(r"voicealert_[a-z_]+[a-z]", path.read_text()))
        assert mentioned, path
        unknown = {name for name in mentioned if name not in exposed}
        assert not unknown, (path.name, unknown)


def test_the_keda_trigger_reads_the_stream_and_group_workers_use() -> None:
    keda = (DEPLOY / "keda.yaml").read_text()
    keys = Keys()
    assert f'stream: "{keys.events}"' in keda
    assert f"consumerGroup: {keys.consumer_group}" in keda
    assert re.search(r"minReplicaCount: [1-9]", keda)
    assert "lagCount:" in keda


def test_the_worker_deployment_probes_with_worker_check_and_outlasts_the_drain() -> None:
    manifest = (DEPLOY / "worker.yaml").read_text()
    assert manifest.count('exec: {command: ["voicealert", "worker", "--check"]}') == 2
    assert "fieldPath: metadata.name" in manifest  # VOICEALERT_CONSUMER_NAME per pod
    grace_s = float(re.findall(r"VOICEALERT_SHUTDOWN_GRACE_S, value: \"(\d+)\"", manifest)[0])
    termination_s = int(re.findall(r"terminationGracePeriodSeconds: (\d+)", manifest)[0])
    consumer_stop_s = 10  # worker/app.py waits this long for the stream consumer's batch
    assert termination_s > grace_s + consumer_stop_s
    port = re.findall(r"VOICEALERT_METRICS_PORT, value: \"(\d+)\"", manifest)[0]
    assert f"containerPort: {port}" in manifest
    assert load_settings({"VOICEALERT_METRICS_PORT": port}).metrics_port == int(port)
