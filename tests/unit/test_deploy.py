"""Deployment manifests: schema-valid, and the operational policy the service relies on.

Schemas come from pip packages that work offline: ``kubernetes-validate`` (the Kubernetes OpenAPI
schemas, strict variant: unknown fields fail) and ``check-jsonschema`` (it vendors the official Compose
specification, ``vendor.compose-spec``). The policy checks are plain functions returning a list of
problems, each exercised against a deliberately broken copy so that none of them can pass vacuously.
"""

from __future__ import annotations

import copy
import importlib.resources
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
KUSTOMIZATION = K8S / "kustomization.yaml"
K8S_VERSION = kubernetes_validate.latest_version()  # newest schema bundled; only stable APIs are used

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
SECRETISH = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
DRAIN_MARGIN_S = 10

Doc = dict[str, Any]


# --------------------------------------------------------------------------------------------- loading
def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)


def load_k8s() -> list[tuple[str, Doc]]:
    """(file name, document) for every non-empty document of every manifest."""
    out: list[tuple[str, Doc]] = []
    for path in manifest_files():
        out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


@pytest.fixture
def docs() -> list[Doc]:
    return [doc for _, doc in load_k8s()]


@pytest.fixture
def compose() -> Doc:
    return yaml.safe_load(COMPOSE.read_text())


def compose_schema() -> Doc:
    ref = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(ref.read_text())


def compose_errors(spec: Doc) -> list[str]:
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(spec)]


# --------------------------------------------------------------------------------------------- helpers
def find(docs: list[Doc], kind: str, name: str) -> Doc:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def workloads(docs: list[Doc]) -> Iterator[Doc]:
    return (d for d in docs if d["kind"] in WORKLOAD_KINDS)


def pod_labels(workload: Doc) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def containers(pod_spec: Doc) -> list[Doc]:
    return [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]


def env_value(container: Doc, name: str) -> Any:
    for env in container.get("env", []):
        if env["name"] == name:
            return env.get("value")
    return None


def prestop_sleep_s(container: Doc) -> float | None:
    """Seconds slept by a preStop hook: native ``sleep`` action, ``sleep N`` or ``time.sleep(N)``."""
    hook = container.get("lifecycle", {}).get("preStop")
    if not hook:
        return None
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = " ".join(hook.get("exec", {}).get("command", []))
    m = re.search(r"(?:^|[\s;])sleep\s+(\d+(?:\.\d+)?)\b|time\.sleep\((\d+(?:\.\d+)?)\)", command)
    return float(m.group(1) or m.group(2)) if m else None


def duration_s(text: str | int | float) -> float:
    """A Compose duration ("45s", "1m30s", "500ms") in seconds."""
    if isinstance(text, int | float):
        return float(text)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def has_appendonly(argv: list[str] | str) -> bool:
    if isinstance(argv, str):
        argv = argv.split()
    return any(a == "--appendonly" and b == "yes" for a, b in itertools.pairwise(argv))


# --------------------------------------------------------------------------------- Kubernetes policy
def security_problems(docs: list[Doc]) -> list[str]:
    """Every container: non-root, read-only root filesystem, no privilege escalation, caps dropped."""
    problems = []
    for w in workloads(docs):
        pod = w["spec"]["template"]["spec"]
        pod_sc = pod.get("securityContext", {})
        for c in containers(pod):
            sc = c.get("securityContext", {})
            where = f"{w['kind']}/{w['metadata']['name']}/{c['name']}"
            if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                problems.append(f"{where}: runAsUser 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities do not drop ALL")
    return problems


def folio_problems(docs: list[Doc]) -> list[str]:
    """Probes, preStop and a grace period that covers preStop + FOLIO_DRAIN_S + margin."""
    dep = find(docs, "Deployment", "folio")
    pod = dep["spec"]["template"]["spec"]
    (c,) = (c for c in pod["containers"] if c["name"] == "folio")
    problems = []
    for probe, path in (
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/readyz"),
    ):
        got = c.get(probe, {}).get("httpGet", {}).get("path")
        if got != path:
            problems.append(f"{probe}: GET {path} expected, got {got}")
    startup = c.get("startupProbe", {})
    if startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) < 120:
        problems.append("startupProbe allows less than 120 s for the model load")
    if 3000 not in [p["containerPort"] for p in c.get("ports", [])]:
        problems.append("container port 3000 missing")
    sleep = prestop_sleep_s(c)
    if sleep is None:
        problems.append("no preStop sleep")
    drain = env_value(c, "FOLIO_DRAIN_S")
    if drain is None:
        problems.append("FOLIO_DRAIN_S not set")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if sleep is not None and drain is not None and grace < sleep + float(drain) + DRAIN_MARGIN_S:
        problems.append(f"terminationGracePeriodSeconds {grace} < preStop {sleep} + drain {drain} + margin")
    return problems


def secret_problems(docs: list[Doc]) -> list[str]:
    """FOLIO_API_KEYS from the folio-api-keys Secret; no literal secret in any env or Secret."""
    problems = []
    dep = find(docs, "Deployment", "folio")
    keys = [e for c in containers(dep["spec"]["template"]["spec"]) for e in c.get("env", [])]
    keys = [e for e in keys if e["name"] == "FOLIO_API_KEYS"]
    ref = keys[0].get("valueFrom", {}).get("secretKeyRef", {}) if keys else {}
    if (ref.get("name"), ref.get("key")) != ("folio-api-keys", "digests"):
        problems.append(f"FOLIO_API_KEYS must come from secretKeyRef folio-api-keys/digests, got {keys}")
    for w in workloads(docs):
        for c in containers(w["spec"]["template"]["spec"]):
            for e in c.get("env", []):
                if SECRETISH.search(e["name"]) and "value" in e:
                    problems.append(f"{w['metadata']['name']}/{c['name']}: literal value for {e['name']}")
    for s in (d for d in docs if d["kind"] == "Secret"):
        if s.get("data") or s.get("stringData"):
            problems.append(f"Secret/{s['metadata']['name']} carries data; create it with kubectl instead")
    return problems


def selector_problems(docs: list[Doc]) -> list[str]:
    """Each Service / PDB selects the pods of exactly one workload; the HPA targets the folio Deployment."""
    problems = []
    ws = list(workloads(docs))
    for w in ws:
        if not selects(w["spec"]["selector"].get("matchLabels", {}), pod_labels(w)):
            problems.append(f"{w['kind']}/{w['metadata']['name']}: selector does not match its pod labels")
    selectors = [
        (f"Service/{d['metadata']['name']}", d["spec"].get("selector", {}))
        for d in docs
        if d["kind"] == "Service"
    ]
    selectors += [
        (f"PDB/{d['metadata']['name']}", d["spec"]["selector"].get("matchLabels", {}))
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
    ]
    for what, sel in selectors:
        matched = [w["metadata"]["name"] for w in ws if selects(sel, pod_labels(w))]
        if len(matched) != 1:
            problems.append(f"{what}: selector {sel} matches workloads {matched}, expected exactly one")
    folio = find(docs, "Deployment", "folio")
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    if not any(selects(p["spec"]["selector"].get("matchLabels", {}), pod_labels(folio)) for p in pdbs):
        problems.append("no PodDisruptionBudget selects the folio pods")
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    targets = [(h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"]) for h in hpas]
    if ("Deployment", "folio") not in targets:
        problems.append(f"no HPA targets Deployment/folio (targets: {targets})")
    return problems


def redis_problems(docs: list[Doc]) -> list[str]:
    sts = find(docs, "StatefulSet", "folio-redis")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    problems = []
    if not has_appendonly([*c.get("command", []), *c.get("args", [])]):
        problems.append("redis runs without --appendonly yes")
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    templates = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
    if mounts.get("data") != "/data" or "data" not in templates:
        problems.append("redis /data is not on a volumeClaimTemplate")
    return problems


def triton_problems(docs: list[Doc]) -> list[str]:
    dep = find(docs, "Deployment", "folio-triton")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    problems = []
    if str(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")) != "1":
        problems.append("triton lacks an nvidia.com/gpu: 1 limit")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/v2/health/ready":
        problems.append("triton readiness is not /v2/health/ready")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/v2/health/live":
        problems.append("triton liveness is not /v2/health/live")
    if {p["containerPort"] for p in c.get("ports", [])} != {8000, 8001, 8002}:
        problems.append("triton ports are not 8000/8001/8002")
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    mounted = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/models"]
    if (
        not mounted
        or claims.get(mounted[0]["name"], {}).get("claimName") != "folio-model-repository"
        or not mounted[0].get("readOnly")
    ):
        problems.append("/models is not the folio-model-repository PVC mounted read-only")
    return problems


K8S_POLICIES: list[Callable[[list[Doc]], list[str]]] = [
    security_problems,
    folio_problems,
    secret_problems,
    selector_problems,
    redis_problems,
    triton_problems,
]


# ------------------------------------------------------------------------------------ Compose policy
def compose_problems(spec: Doc) -> list[str]:
    problems = []
    services = spec.get("services", {})
    for name in ("folio", "triton", "redis"):
        svc = services.get(name)
        if svc is None:
            problems.append(f"service {name} missing")
            continue
        hc = svc.get("healthcheck", {})
        if not hc.get("test") or hc.get("disable"):
            problems.append(f"{name}: no healthcheck")
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
        for key, value in env.items():
            if (
                SECRETISH.search(key)
                and value is not None
                and not re.fullmatch(r"\$\{\w+(:?[?\-].*)?\}", str(value))
            ):
                problems.append(f"{name}: literal value for {key}")
        if str(svc.get("user", "root")).split(":")[0] in ("root", "0"):
            problems.append(f"{name}: runs as root")
    folio = services.get("folio", {})
    for dep in ("redis", "triton"):
        cond = (
            (folio.get("depends_on") or {}).get(dep, {}) if isinstance(folio.get("depends_on"), dict) else {}
        )
        if cond.get("condition") != "service_healthy":
            problems.append(f"folio does not wait for {dep} to be healthy")
    if "/readyz" not in " ".join(map(str, folio.get("healthcheck", {}).get("test", []))):
        problems.append("folio healthcheck does not probe /readyz")
    if folio.get("read_only") is not True or not any(
        str(t).startswith("/tmp") for t in folio.get("tmpfs", [])
    ):
        problems.append("folio: root filesystem not read-only with a /tmp tmpfs")
    env = folio.get("environment", {})
    drain = float(env.get("FOLIO_DRAIN_S", "nan")) if isinstance(env, dict) else float("nan")
    grace = duration_s(folio.get("stop_grace_period", "10s"))
    if not grace >= drain + DRAIN_MARGIN_S:
        problems.append(f"folio stop_grace_period {grace}s < FOLIO_DRAIN_S {drain} + {DRAIN_MARGIN_S}")
    if not has_appendonly(services.get("redis", {}).get("command", [])):
        problems.append("redis runs without --appendonly yes")
    devices = services.get("triton", {}).get("deploy", {}).get("resources", {}).get("reservations", {})
    if not any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices.get("devices", [])
    ):
        problems.append("triton has no nvidia GPU reservation")
    return problems


# ------------------------------------------------------------------------------------ k8s: the schema
@pytest.mark.parametrize(
    "name,doc",
    [
        pytest.param(name, doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}")
        for name, doc in load_k8s()
    ],
)
def test_k8s_document_is_valid_strict(name: str, doc: Doc) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["metadata"].get("namespace") in (None, "folio") or doc["kind"] == "Namespace"


def test_k8s_covers_every_concern() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in load_k8s()}
    for kind in [("Deployment", "folio"), ("Service", "folio"), ("HorizontalPodAutoscaler", "folio")]:
        assert kind in kinds
    for kind in [
        ("PodDisruptionBudget", "folio"),
        ("Deployment", "folio-triton"),
        ("Service", "folio-triton"),
    ]:
        assert kind in kinds
    assert ("StatefulSet", "folio-redis") in kinds and ("Service", "folio-redis") in kinds


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == sorted(p.name for p in manifest_files())
    assert all(
        doc["metadata"].get("namespace", kust["namespace"]) == kust["namespace"] for _, doc in load_k8s()
    )


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda c: c.update(livenesProbe=c.pop("livenessProbe")), id="misspelt-field"),
        pytest.param(lambda c: c["securityContext"].update(runAsUsr=1034), id="unknown-nested-field"),
        pytest.param(lambda c: c["ports"][0].update(containerPort="http"), id="wrong-type"),
        pytest.param(lambda c: c.pop("name"), id="missing-required"),
    ],
)
def test_k8s_validator_rejects_a_broken_manifest(docs: list[Doc], breakage: Callable[[Doc], Any]) -> None:
    dep = copy.deepcopy(find(docs, "Deployment", "folio"))
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    breakage(dep["spec"]["template"]["spec"]["containers"][0])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


# ------------------------------------------------------------------------------------ k8s: the policy
@pytest.mark.parametrize("policy", K8S_POLICIES, ids=lambda f: f.__name__)
def test_k8s_policy_holds(docs: list[Doc], policy: Callable[[list[Doc]], list[str]]) -> None:
    assert policy(docs) == []


def folio_container(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", "folio")["spec"]["template"]["spec"]["containers"][0]


def set_env(container: Doc, name: str, **entry: Any) -> None:
    container["env"] = [e for e in container["env"] if e["name"] != name] + [{"name": name, **entry}]


K8S_BREAKAGES: list[tuple[str, Callable[[list[Doc]], Any], str]] = [
    ("no-startup", lambda d: folio_container(d).pop("startupProbe"), "startupProbe"),
    (
        "liveness-path",
        lambda d: folio_container(d)["livenessProbe"]["httpGet"].update(path="/healthz"),
        "/livez",
    ),
    ("no-prestop", lambda d: folio_container(d).pop("lifecycle"), "preStop"),
    (
        "short-grace",
        lambda d: find(d, "Deployment", "folio")["spec"]["template"]["spec"].update(
            terminationGracePeriodSeconds=20
        ),
        "terminationGracePeriodSeconds",
    ),
    (
        "long-drain",
        lambda d: set_env(folio_container(d), "FOLIO_DRAIN_S", value="60"),
        "terminationGracePeriod",
    ),
    (
        "literal-keys",
        lambda d: set_env(folio_container(d), "FOLIO_API_KEYS", value="ab" * 32),
        "FOLIO_API_KEYS",
    ),
    (
        "writable-root",
        lambda d: find(d, "Deployment", "folio-triton")["spec"]["template"]["spec"]["containers"][0][
            "securityContext"
        ].update(readOnlyRootFilesystem=False),
        "readOnlyRootFilesystem",
    ),
    (
        "root-user",
        lambda d: folio_container(d)["securityContext"].update(runAsNonRoot=False, runAsUser=0),
        "runAsNonRoot",
    ),
    (
        "escalation",
        lambda d: find(d, "StatefulSet", "folio-redis")["spec"]["template"]["spec"]["containers"][0][
            "securityContext"
        ].pop("allowPrivilegeEscalation"),
        "allowPrivilegeEscalation",
    ),
    (
        "pdb-too-wide",
        lambda d: find(d, "PodDisruptionBudget", "folio")["spec"]["selector"].update(
            matchLabels={"app.kubernetes.io/name": "folio"}
        ),
        "PDB/folio",
    ),
    (
        "service-typo",
        lambda d: find(d, "Service", "folio-triton")["spec"]["selector"].update(
            {"app.kubernetes.io/component": "tritn"}
        ),
        "Service/folio-triton",
    ),
    (
        "hpa-target",
        lambda d: find(d, "HorizontalPodAutoscaler", "folio")["spec"]["scaleTargetRef"].update(
            name="folio-api"
        ),
        "HPA",
    ),
    (
        "no-aof",
        lambda d: find(d, "StatefulSet", "folio-redis")["spec"]["template"]["spec"]["containers"][0].update(
            args=["--appendonly", "no"]
        ),
        "--appendonly",
    ),
    (
        "gpu-missing",
        lambda d: find(d, "Deployment", "folio-triton")["spec"]["template"]["spec"]["containers"][0][
            "resources"
        ]["limits"].pop("nvidia.com/gpu"),
        "nvidia.com/gpu",
    ),
]


@pytest.mark.parametrize("breakage,expected", [pytest.param(b, e, id=i) for i, b, e in K8S_BREAKAGES])
def test_k8s_policy_catches_a_broken_copy(
    docs: list[Doc], breakage: Callable[[list[Doc]], Any], expected: str
) -> None:
    broken = copy.deepcopy(docs)
    breakage(broken)
    problems = [p for policy in K8S_POLICIES for p in policy(broken)]
    assert any(expected in p for p in problems), problems


def test_prestop_parsing() -> None:
    assert prestop_sleep_s({"lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}}}) == 5
    cmd = ["python", "-c", "import time; time.sleep(7)"]
    assert prestop_sleep_s({"lifecycle": {"preStop": {"exec": {"command": cmd}}}}) == 7
    assert prestop_sleep_s({"lifecycle": {"preStop": {"sleep": {"seconds": 3}}}}) == 3
    assert prestop_sleep_s({"lifecycle": {"preStop": {"exec": {"command": ["true"]}}}}) is None


# ------------------------------------------------------------------------------------ Compose
def test_compose_schema_is_the_official_spec() -> None:
    schema = compose_schema()
    assert schema["title"] == "Compose Specification"
    assert {"services", "volumes", "networks"} <= set(schema["properties"])


def test_compose_is_valid(compose: Doc) -> None:
    assert compose_errors(compose) == []


def test_compose_is_valid_through_the_cli() -> None:
    """The same check a reviewer runs by hand: check-jsonschema --builtin-schema vendor.compose-spec."""
    argv = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(
            lambda s: s["services"]["redis"].update(healthchek={"test": ["CMD", "true"]}), id="unknown-key"
        ),
        pytest.param(
            lambda s: s["services"]["folio"]["depends_on"]["redis"].update(condition="service_ready"),
            id="bad-condition",
        ),
        pytest.param(lambda s: s["services"]["folio"].update(environment=42), id="wrong-type"),
        pytest.param(lambda s: s.update(servics=s.pop("services")), id="misspelt-top-level"),
    ],
)
def test_compose_schema_rejects_a_broken_copy(compose: Doc, breakage: Callable[[Doc], Any]) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert compose_errors(broken)


def test_compose_policy_holds(compose: Doc) -> None:
    assert compose_problems(compose) == []
    folio = compose["services"]["folio"]
    assert folio["image"] == "${FOLIO_IMAGE:-folio:latest}"
    assert folio["environment"]["FOLIO_REDIS_URL"] == "redis://redis:6379/0"
    assert folio["environment"]["FOLIO_TRITON_URL"] == "triton:8001"
    assert compose["services"]["triton"]["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert any(v.endswith(":/models:ro") for v in compose["services"]["triton"]["volumes"])


def folio_env(spec: Doc) -> Doc:
    env: Doc = spec["services"]["folio"]["environment"]
    return env


COMPOSE_BREAKAGES: list[tuple[str, Callable[[Doc], Any], str]] = [
    ("no-healthcheck", lambda s: s["services"]["redis"].pop("healthcheck"), "redis: no healthcheck"),
    (
        "started-not-healthy",
        lambda s: s["services"]["folio"]["depends_on"]["triton"].update(condition="service_started"),
        "triton to be healthy",
    ),
    (
        "short-list-depends",
        lambda s: s["services"]["folio"].update(depends_on=["redis", "triton"]),
        "healthy",
    ),
    ("literal-keys", lambda s: folio_env(s).update(FOLIO_API_KEYS="ab" * 32), "literal value"),
    ("short-grace", lambda s: s["services"]["folio"].update(stop_grace_period="15s"), "stop_grace_period"),
    ("no-aof", lambda s: s["services"]["redis"].update(command=["redis-server"]), "--appendonly"),
    ("root", lambda s: s["services"]["folio"].update(user="root"), "runs as root"),
    ("writable", lambda s: s["services"]["folio"].pop("read_only"), "read-only"),
    ("no-gpu", lambda s: s["services"]["triton"].pop("deploy"), "GPU"),
]


@pytest.mark.parametrize("breakage,expected", [pytest.param(b, e, id=i) for i, b, e in COMPOSE_BREAKAGES])
def test_compose_policy_catches_a_broken_copy(
    compose: Doc, breakage: Callable[[Doc], Any], expected: str
) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    problems = compose_problems(broken)
    assert any(expected in p for p in problems), problems


def test_duration_parsing() -> None:
    assert duration_s("45s") == 45
    assert duration_s("1m30s") == 90
    assert duration_s("500ms") == 0.5
    with pytest.raises(ValueError):
        duration_s("45 seconds")
