"""Static validation of deploy/ (Docker does not run on these machines, and there is no cluster):
the files parse; every MMBEE_* variable they set is a Settings field and the environments they
build validate as Settings; ports, probe paths and scrape paths are the app's; commands are
valid `mmbee` command lines; the Kafka cluster is a consistent 3-node KRaft quorum; resource
requests cover the measured worker memory."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmbee.cli import build_parser
from mmbee.settings import Settings
from mmbee.streams.app import build_app
from mmbee.streams.web import ROUTES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
FIELDS = set(Settings.model_fields)

MEASURED_PEAK_RSS_MIB = 913
"""Peak RSS of a worker (segments + graph, 8 partitions, all of them after a failover) measured
by `bench/scale.py` on the 2-core dev box; see deploy/RUNBOOK.md "Sizing". The models of the
featurizers (Whisper tiny.en, MiniLM, EfficientNet-Lite0) add to it in production."""
MODEL_HEADROOM_MIB = 512


def k8s_docs() -> dict[str, list[dict[str, Any]]]:
    """file name -> its YAML documents."""
    return {
        p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        for p in sorted(K8S.glob("*.yaml"))
    }


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word, rest.strip()))
    assert not pending, "Dockerfile ends inside a continuation"
    return out


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            for item in shlex.split(rest):
                key, eq, value = item.partition("=")
                assert eq, f"ENV without '=': {item}"
                env[key] = value
    return env


def pods() -> list[tuple[str, dict[str, Any]]]:
    """(file, pod spec) of every workload."""
    out = []
    for name, docs in k8s_docs().items():
        for d in docs:
            if d["kind"] in ("StatefulSet", "Job", "Deployment"):
                out.append((name, d["spec"]["template"]["spec"]))
    return out


def configmap() -> dict[str, str]:
    maps = [d for d in k8s_docs()["configmap.yaml"] if d["kind"] == "ConfigMap"]
    assert len(maps) == 1
    return maps[0]["data"]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The MMBEE_* environment a container gets (ConfigMap + env), secret/field refs replaced by
    stand-in values of the right kind."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        assert src["configMapRef"]["name"] == "mmbee-config"
        env.update(configmap())
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]
            assert "secretKeyRef" in ref or "fieldRef" in ref, item
            env[item["name"]] = "10.0.0.7" if "fieldRef" in ref else "stand-in"
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a worker with exactly this environment would build them."""
    for key in [k for k in os.environ if k.startswith("MMBEE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("MMBEE_"):
            monkeypatch.setenv(key, value)
    return Settings()


def app_routes() -> set[str]:
    ctx = build_app(Settings(store="memory://"))
    try:
        return {v.view_path for v in ctx.app.web.views.values()}
    finally:
        ctx.shutdown()


def mmbee_vars(env: dict[str, str]) -> set[str]:
    return {k for k in env if k.startswith("MMBEE_")}


# --- every file parses ---------------------------------------------------------------------


def test_every_deploy_file_parses() -> None:
    docs = k8s_docs()
    assert set(docs) >= {
        "configmap.yaml", "service.yaml", "statefulset.yaml", "job-topics.yaml", "pdb.yaml",
        "kustomization.yaml", "secret.example.yaml",
    }  # fmt: skip
    for name, items in docs.items():
        assert items, name
        for d in items:
            assert d.get("apiVersion") and d.get("kind"), name
    kustomization = docs["kustomization.yaml"][0]
    listed = set(kustomization["resources"])
    assert listed == set(docs) - {"kustomization.yaml", "secret.example.yaml"}
    assert "secret.example.yaml" not in listed  # an example, never applied with real values
    assert compose()["services"]
    instructions = [w for w, _ in dockerfile()]
    known = {"FROM", "RUN", "ENV", "COPY", "USER", "WORKDIR", "VOLUME", "EXPOSE",
             "HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT", "CMD", "ARG", "LABEL"}  # fmt: skip
    assert set(instructions) <= known, set(instructions) - known
    assert instructions[0] == "FROM"
    assert (DEPLOY / "RUNBOOK.md").is_file()


# --- environment variables -------------------------------------------------------------------


def test_every_mmbee_variable_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    sources: dict[str, set[str]] = {
        "Dockerfile": mmbee_vars(dockerfile_env()),
        "configmap.yaml": mmbee_vars(configmap()),
    }
    for name, spec in pods():
        for c in spec["containers"]:
            sources[f"{name}:{c['name']}"] = mmbee_vars(container_env(c))
    for svc, body in compose()["services"].items():
        sources[f"compose:{svc}"] = mmbee_vars(body.get("environment") or {})
    for where, names in sources.items():
        unknown = {n for n in names if n.removeprefix("MMBEE_").lower() not in FIELDS}
        assert not unknown, f"{where} sets variables settings.py does not know: {unknown}"
    assert sum(len(v) for v in sources.values()) > 30


def test_each_environment_builds_valid_production_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    built: dict[str, Settings] = {}
    for name, spec in pods():
        for c in spec["containers"]:
            built[f"{name}:{c['name']}"] = settings_from(
                dockerfile_env() | container_env(c), monkeypatch
            )
    for svc in ("topics", "worker"):
        env = compose()["services"][svc]["environment"]
        built[f"compose:{svc}"] = settings_from(dockerfile_env() | env, monkeypatch)
    for where, s in built.items():
        assert s.profile == "production", where
        assert s.replication_factor == 3 and s.min_insync_replicas == 2, where
        assert s.producer_acks == "all" and s.standby_replicas == 1, where
        assert s.rocksdb_memory_budget_mib and s.log_format == "json", where
        assert s.member_watchdog is False, where  # Kafka expires dead members itself
        assert s.components and set(s.components) <= {"segments", "asr", "graph"}, where
    k8s_worker = built["statefulset.yaml:worker"]
    assert k8s_worker.security_protocol == "SASL_SSL" and k8s_worker.sasl_password is not None
    assert k8s_worker.kafka_client_kwargs()["sasl_plain_username"] == "stand-in"
    # the topic job and the workers must agree on every topic-shaping setting
    job = built["job-topics.yaml:topics"]
    for field in ("partitions", "topic_prefix", "app_id", "components", "replication_factor"):
        assert getattr(job, field) == getattr(k8s_worker, field), field
    assert built["compose:topics"].partitions == built["compose:worker"].partitions


# --- ports, probes, routes -------------------------------------------------------------------


def test_ports_and_probes_match_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    routes = app_routes()
    assert {ROUTES["live"], ROUTES["ready"], ROUTES["metrics"], ROUTES["status"]} <= routes
    image_env = dockerfile_env()
    port = int(image_env["MMBEE_WEB_PORT"])
    exposed = [int(a) for w, a in dockerfile() if w == "EXPOSE"]
    assert exposed == [port]
    health = next(a for w, a in dockerfile() if w == "HEALTHCHECK")
    assert f"http://127.0.0.1:{port}{ROUTES['live']}" in health

    docs = k8s_docs()
    sts = docs["statefulset.yaml"][0]
    worker = sts["spec"]["template"]["spec"]["containers"][0]
    settings = settings_from(image_env | container_env(worker), monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports == {"web": settings.web_port} and settings.web_port == port
    assert worker["livenessProbe"]["httpGet"] == {"path": ROUTES["live"], "port": "web"}
    assert worker["startupProbe"]["httpGet"] == {"path": ROUTES["live"], "port": "web"}
    assert worker["readinessProbe"]["httpGet"] == {"path": ROUTES["ready"], "port": "web"}
    # the web server binds the pod address the kubelet probes (not loopback, not 0.0.0.0)
    host_ref = next(e for e in worker["env"] if e["name"] == "MMBEE_WEB_HOST")
    assert host_ref["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    svc = docs["service.yaml"][0]
    assert svc["spec"]["ports"][0]["targetPort"] == "web"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    selector = sts["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"] == selector == sts["spec"]["template"]["metadata"]["labels"]
    pod_meta = sts["spec"]["template"]["metadata"]
    for notes in (svc["metadata"]["annotations"], pod_meta["annotations"]):
        assert notes["prometheus.io/path"] == ROUTES["metrics"]
        assert int(notes["prometheus.io/port"]) == port

    services = compose()["services"]
    cw = services["worker"]
    assert cw["ports"] == [f"127.0.0.1::{port}"]  # published on the host's loopback only
    assert int(cw["environment"]["MMBEE_WEB_PORT"]) == port
    for svc_name, body in services.items():
        for mapping in body.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{svc_name} publishes {mapping}"


def test_rocksdb_state_lives_on_the_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    sts = k8s_docs()["statefulset.yaml"][0]
    worker = sts["spec"]["template"]["spec"]["containers"][0]
    settings = settings_from(dockerfile_env() | container_env(worker), monkeypatch)
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
    assert "state" in claims and mounts["state"] == "/var/lib/mmbee"
    for path in (settings.data_dir, settings.graph_dir, settings.model_cache_dir):
        assert str(path).startswith(mounts["state"] + "/"), path
    assert str(settings.ssl_cafile).startswith(mounts["kafka-ca"] + "/")
    cw = compose()["services"]["worker"]
    assert cw["environment"]["MMBEE_DATA_DIR"].startswith(cw["volumes"][0])


# --- commands ------------------------------------------------------------------------------


def test_commands_are_valid_mmbee_command_lines() -> None:
    parser = build_parser()
    words = dict(dockerfile())
    entry = json.loads(words["ENTRYPOINT"])
    assert entry == ["mmbee"]
    assert parser.parse_args(json.loads(words["CMD"])).verb == "worker"
    commands = {f"{n}:{c['name']}": c["args"] for n, spec in pods() for c in spec["containers"]}
    commands |= {
        f"compose:{s}": b["command"] for s, b in compose()["services"].items() if "command" in b
    }
    for where, argv in commands.items():
        args = parser.parse_args(argv)
        if args.verb == "topics":
            assert args.action == "create" and args.profile == "production", where
            assert args.handler.__name__ == "_topics_create"
        else:
            assert args.verb == "worker", where
    assert "compose:topics" in commands and "job-topics.yaml:topics" in commands


def test_compose_runs_topics_once_before_the_workers() -> None:
    services = compose()["services"]
    topics, worker = services["topics"], services["worker"]
    assert topics["restart"] == "no"
    assert worker["depends_on"] == {"topics": {"condition": "service_completed_successfully"}}
    brokers = [s for s in services if s.startswith("kafka-")]
    assert {s: c["condition"] for s, c in topics["depends_on"].items()} == dict.fromkeys(
        brokers, "service_healthy"
    )
    assert worker["image"] == topics["image"]
    assert topics["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / topics["build"]["context"] / topics["build"]["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    )
    assert worker["deploy"]["replicas"] >= 2


def test_job_runs_before_workers_can_start_cleanly() -> None:
    job = k8s_docs()["job-topics.yaml"][0]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    assert job["spec"]["backoffLimit"] >= 1


# --- the Kafka cluster ---------------------------------------------------------------------


def test_compose_kafka_is_a_three_node_kraft_quorum() -> None:
    services = compose()["services"]
    brokers = {s: b for s, b in services.items() if s.startswith("kafka-")}
    assert len(brokers) == 3
    ids, advertised = {}, {}
    for name, b in brokers.items():
        env = b["environment"]
        assert b["image"].startswith("apache/kafka:")
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        ids[name] = env["KAFKA_NODE_ID"]
        listeners = dict(x.split("://") for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
        advertised[name] = listeners["PLAINTEXT"]
        assert listeners["PLAINTEXT_HOST"].startswith("127.0.0.1:")
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= 4 * 2**20  # changelog rows, dead letters
    voters = {}
    for v in next(iter(brokers.values()))["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(
        ","
    ):
        node, _, hostport = v.partition("@")
        voters[hostport.split(":")[0]] = node
    assert voters == ids  # each broker is a voter under its own node id
    assert len(set(ids.values())) == 3
    cluster_id = next(iter(brokers.values()))["environment"]["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16  # a Kafka UUID
    bootstrap = services["worker"]["environment"]["MMBEE_BOOTSTRAP_SERVERS"]
    assert sorted(bootstrap.split(",")) == sorted(advertised.values())


# --- resources -----------------------------------------------------------------------------


def _mib(quantity: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi)?", quantity)
    assert m, quantity
    return (
        float(m.group(1)) * {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0, None: 1 / 2**20}[m.group(2)]
    )


def test_resource_requests_cover_the_measured_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    sts = k8s_docs()["statefulset.yaml"][0]
    worker = sts["spec"]["template"]["spec"]["containers"][0]
    settings = settings_from(dockerfile_env() | container_env(worker), monkeypatch)
    res = worker["resources"]
    request = _mib(res["requests"]["memory"])
    limit = _mib(res["limits"]["memory"])
    budget = settings.rocksdb_memory_budget_mib or 0
    assert request >= MEASURED_PEAK_RSS_MIB + budget + MODEL_HEADROOM_MIB
    assert limit >= request
    compose_limit = compose()["services"]["worker"]["deploy"]["resources"]["limits"]["memory"]
    assert _mib(compose_limit.replace("g", "Gi")) >= request
