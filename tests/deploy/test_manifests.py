"""The Kubernetes manifests in deploy/kubernetes: built as kustomize would (without kubectl),
validated against the official schemas, and checked for what a deployment relies on."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.observability.tracing import exporter_from_env
from app.settings import Settings, is_kafka_security_property

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
BUILDS = {"base": KUBE / "base", "production": KUBE / "overlays" / "production"}
K8S_VERSIONS = ("1.31", kubernetes_validate.utils.latest_version())
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
NAMED_LISTS = {"containers", "initContainers", "env", "volumes", "volumeMounts"}
SHUTDOWN_S = 30  # the worker's SIGTERM-to-exit bound (docs/testing.md)
Obj = dict[str, Any]


def build(directory: Path) -> list[Obj]:
    """The objects `kustomize build directory` makes, for the fields these kustomizations use:
    resources (files, and directories holding a kustomization), namespace, images, patches."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(spec) - {"apiVersion", "kind", "resources", "namespace", "images",
                               "patches"}
    assert not unsupported, f"{directory}: this loader does not implement {unsupported}"
    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        objects += build(path) if path.is_dir() else [
            o for o in yaml.safe_load_all(path.read_text()) if o]
    for patch in spec.get("patches", []):
        apply_patch(objects, yaml.safe_load((directory / patch["path"]).read_text()),
                    patch.get("target"))
    for image in spec.get("images", []):
        for obj in objects:
            for container in containers(obj):
                name, tag = re.fullmatch(r"([^:]+)(?::(.+))?", container["image"]).groups()
                if name == image["name"]:
                    tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = spec["namespace"]
    return objects


def apply_patch(objects: list[Obj], patch: Any, target: dict[str, str] | None) -> None:
    """Apply a strategic-merge patch (a mapping) or a JSON 6902 patch (a list of replace/add
    operations) to the objects ``target`` (kind, name, group, version) or the patch names."""
    target = target or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
    api = "/".join(filter(None, [target.get("group"), target.get("version")]))
    hits = [o for o in objects if (o["kind"], o["metadata"]["name"]) == (target["kind"],
            target["name"]) and (not target.get("version") or o["apiVersion"] == api)]
    assert hits, f"patch target {target} matches no object"
    for obj in hits:
        if isinstance(patch, dict):
            obj.update(merge(obj, patch))
            continue
        for op in patch:
            assert op["op"] in ("replace", "add"), f"loader supports replace/add, not {op}"
            *parents, last = [int(p) if p.isdigit() else p for p in op["path"].split("/")[1:]]
            node = obj
            for part in parents:
                node = node[part]
            assert op["op"] == "add" or last in node or isinstance(node, list)
            node[last] = op["value"]


def merge(base: Any, patch: Any, key: str = "") -> Any:
    """Strategic merge: mappings merge recursively, the lists in NAMED_LISTS merge by item
    name (their patchMergeKey; as kustomize orders them, the patch's items come first, then
    the others), every other value is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: merge(base[k], v, k) if k in base else v
                           for k, v in patch.items()}}
    if key in NAMED_LISTS and isinstance(base, list) and isinstance(patch, list):
        old = {item["name"]: item for item in base}
        merged = [merge(old[i["name"]], i) if i["name"] in old else i for i in patch]
        return merged + [i for i in base if i["name"] not in {p["name"] for p in patch}]
    return copy.deepcopy(patch)


def pod_spec(obj: Obj) -> Obj:
    """The pod template's spec of a workload; {} for other kinds."""
    return obj.get("spec", {}).get("template", {}).get("spec", {})


def containers(obj: Obj) -> list[Obj]:
    """A workload's containers and init containers; [] for other kinds."""
    return pod_spec(obj).get("containers", []) + pod_spec(obj).get("initContainers", [])


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    """The object of that kind and name (exactly one must exist)."""
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a (matchLabels) selector selects objects with these labels."""
    return bool(selector) and selector.items() <= labels.items()


def kind_name(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def workloads(objects: list[Obj]) -> list[Obj]:
    """The Deployments and StatefulSets."""
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


@pytest.fixture(scope="module", params=list(BUILDS))
def objects(request: pytest.FixtureRequest) -> list[Obj]:
    return build(BUILDS[request.param])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_objects_match_the_official_schemas_strictly(objects: list[Obj], version: str) -> None:
    for obj in objects:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, version, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate({**one(objects, "Deployment", "recoloop-serve"),
                                      "replica": 2}, version, strict=True)  # strict works


def test_the_loader_agrees_with_kubectl_kustomize() -> None:
    """Where kubectl is installed, the real kustomize builds the same objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: the hand-written loader is checked on its own")
    for directory in BUILDS.values():
        out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        ours, theirs = build(directory), list(yaml.safe_load_all(out))
        assert sorted(ours, key=kind_name) == sorted(theirs, key=kind_name)


def test_the_production_overlay_changes_what_it_says() -> None:
    base, prod = (one(build(d), "StatefulSet", "recoloop-worker") for d in BUILDS.values())
    claim = lambda s: s["spec"]["volumeClaimTemplates"][0]["spec"]  # noqa: E731
    assert (claim(base)["resources"]["requests"]["storage"],
            claim(prod)["resources"]["requests"]["storage"]) == ("10Gi", "50Gi")
    limits = [containers(s)[0]["resources"]["limits"]["memory"] for s in (base, prod)]
    assert limits == ["1Gi", "2Gi"]
    assert containers(prod)[0]["resources"]["requests"]["cpu"] == "500m"  # merged, not replaced
    assert all(o["metadata"].get("namespace") == "recoloop" for o in build(BUILDS["production"])
               if o["kind"] != "Namespace")


def test_the_worker_statefulset(objects: list[Obj]) -> None:
    worker = one(objects, "StatefulSet", "recoloop-worker")
    [container] = containers(worker)
    env = {e["name"]: e for e in container["env"]}
    assert env["RECOLOOP_WORKER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    [claim] = worker["spec"]["volumeClaimTemplates"]
    assert env["RECOLOOP_DATA_DIR"]["value"] == mounts[claim["metadata"]["name"]]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["web"] == int(env["RECOLOOP_WEB_PORT"]["value"])
    assert ports["metrics"] == int(env["RECOLOOP_METRICS_PORT"]["value"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "web"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "web"}
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= SHUTDOWN_S + 15
    assert "cpu" not in container["resources"].get("limits", {})  # throttling stalls commits
    headless = one(objects, "Service", worker["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    pdb = one(objects, "PodDisruptionBudget", "recoloop-worker")
    pods = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"]
            for w in workloads(objects)}
    assert [n for n, labels in pods.items() if selects(pdb["spec"]["selector"]["matchLabels"],
                                                       labels)] == ["recoloop-worker"]


def test_services_hpa_and_references(objects: list[Obj]) -> None:
    for service in (o for o in objects if o["kind"] == "Service"):
        [target] = [w for w in workloads(objects) if selects(
            service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        port_names = {p["name"] for c in containers(target) for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    hpa = one(objects, "HorizontalPodAutoscaler", "recoloop-serve")
    ref = hpa["spec"]["scaleTargetRef"]
    assert one(objects, ref["kind"], ref["name"])["apiVersion"] == ref["apiVersion"]
    assert ref["kind"] == "Deployment" and ref["name"] == "recoloop-serve"
    for workload in workloads(objects):
        for container in containers(workload):
            refs = [(k.removesuffix("Ref"), v["name"]) for e in container["envFrom"]
                    for k, v in e.items()]
            assert refs == [("configMap", "recoloop-config"), ("secret", "recoloop-kafka")]
            for kind, name in refs:
                one(objects, kind[0].upper() + kind[1:], name)
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
            assert sc["capabilities"]["drop"] == ["ALL"]
        pod_sc = pod_spec(workload)["securityContext"]
        assert pod_sc["runAsNonRoot"] and pod_sc["runAsUser"] > 0
        for volume in pod_spec(workload)["volumes"]:
            if "secret" in volume:
                one(objects, "Secret", volume["secret"]["secretName"])


def pod_env(objects: list[Obj], workload: Obj, tmp_path: Path) -> dict[str, str]:
    """The environment of a workload's container as the pod would see it: ConfigMap data,
    Secret keys (placeholders), env values (the pod name for fieldRefs). A *.location file
    on a mounted Secret's key becomes a temporary file (Settings checks that it exists)."""
    [container] = containers(workload)
    env = {**one(objects, "ConfigMap", "recoloop-config")["data"],
           **one(objects, "Secret", "recoloop-kafka")["stringData"]}
    env |= {e["name"]: e.get("value", f"{workload['metadata']['name']}-0")
            for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for volume in pod_spec(workload)["volumes"]:
        if "secret" in volume:
            secret = one(objects, "Secret", volume["secret"]["secretName"])
            for key in secret["stringData"]:
                local = tmp_path / key
                local.write_text(secret["stringData"][key])
                env = {k: str(local) if v == f"{mounts[volume['name']]}/{key}" else v
                       for k, v in env.items()}
    return env


def test_every_variable_is_a_setting(objects: list[Obj], tmp_path: Path) -> None:
    known = set(Settings.variables())
    for workload in workloads(objects):
        env = pod_env(objects, workload, tmp_path)
        for var in (v for v in env if v.startswith("RECOLOOP_")):
            prop = var.removeprefix("RECOLOOP_KAFKA_").lower().replace("_", ".")
            assert var in known or var.startswith("RECOLOOP_KAFKA_") and \
                is_kafka_security_property(prop), f"{var} is no setting (it would be ignored)"
        assert not [v for v in env if not v.startswith(("RECOLOOP_", "OTEL_"))]
        settings = Settings.from_env(env)
        assert settings.worker.bind_host == "0.0.0.0"
        assert settings.kafka.security["sasl.password"] == "CHANGE-ME"
        assert exporter_from_env(env) is None  # tracing off, and the OTEL_* values valid
        ports = {p["name"]: p["containerPort"] for c in containers(workload) for p in c["ports"]}
        if workload["kind"] == "Deployment":
            assert ports["http"] == settings.serve.port
        else:
            assert (ports["web"], ports["metrics"]) == (settings.worker.web_port,
                                                          settings.worker.metrics_port)


def alert_jobs() -> set[str]:
    """The job label values the rules select (job="...")."""
    return set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))


def test_service_monitors_scrape_real_ports_with_the_rules_job(objects: list[Obj]) -> None:
    services = [o for o in objects if o["kind"] == "Service"]
    jobs = {}
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        chosen = [s for s in services if selects(monitor["spec"]["selector"]["matchLabels"],
                                                 s["metadata"]["labels"])]
        assert len(chosen) == 1, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in {p["name"] for p in chosen[0]["spec"]["ports"]}
            assert endpoint["path"] == "/metrics"
            job = chosen[0]["metadata"]["name"]  # the operator's default job label
            for relabel in endpoint.get("relabelings", []):
                if relabel.get("targetLabel") == "job" and relabel["action"] == "replace":
                    job = relabel["replacement"]
            jobs[monitor["metadata"]["name"]] = job
    assert alert_jobs() == {"recoloop"}
    assert jobs == {"recoloop-worker": "recoloop", "recoloop-serve": "recoloop-serve"}


def test_prometheus_rule_is_alerts_yml_rendered(objects: list[Obj], tmp_path: Path) -> None:
    rule = one(objects, "PrometheusRule", "recoloop")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    rendered = tmp_path / "prometheus-rule.yaml"
    subprocess.run([sys.executable, str(KUBE / "render_rules.py"), "--output", str(rendered)],
                   check=True, timeout=60)
    committed = KUBE / "base" / "prometheus-rule.yaml"
    assert rendered.read_text() == committed.read_text(), \
        "stale: run python deploy/kubernetes/render_rules.py"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not on PATH (deploy/prometheus/ensure-prometheus.sh installs "
                    "it): the rules' PromQL is not checked")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    done = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
