"""Deployment manifests: schema-valid, and the operational policy the service relies on.

Schemas come from pip packages that work offline: ``kubernetes-validate`` (the Kubernetes OpenAPI
schemas, strict variant: unknown fields fail) and ``check-jsonschema`` (it vendors the official Compose
specification, ``vendor.compose-spec``). The policy checks are plain functions returning a list of
problems, each exercised against a deliberately broken copy so that none of them can pass vacuously.
"""

from __future__ import annotations

import copy
import dataclasses
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

from scripts.audit import NGC_TAG, advisories_for
from tests.paths import ROOT

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
    """Deployments, StatefulSets, DaemonSets, and each CronJob as its job (spec.template = the pod)."""
    for d in docs:
        if d["kind"] in WORKLOAD_KINDS:
            yield d
        elif d["kind"] == "CronJob":
            yield {"kind": "CronJob", "metadata": d["metadata"], "spec": d["spec"]["jobTemplate"]["spec"]}


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
    ws = [w for w in workloads(docs) if w["kind"] != "CronJob"]  # a Job's selector is generated
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


# ------------------------------------------------------------------------ k8s: exposure policy
REDIS_SECRET = ("folio-redis", "password")
RESTRICTED_MUST = ("shared-memory", "model-repository")  # the CVE-2025-23319 chain; model load/unload
REQUIREPASS_REF = re.compile(r"^\$\((\w+)\)$")


def env_secret(container: Doc, name: str) -> tuple[str, str] | None:
    """(secret, key) of env var ``name`` when it comes from a secretKeyRef."""
    for env in container.get("env", []):
        if env["name"] == name:
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            return (ref["name"], ref["key"]) if ref else None
    return None


def ngc_release_problems(where: str, image: str) -> list[str]:
    """The NGC Triton tag must be one that no recorded NVIDIA bulletin affects (scripts/audit.py)."""
    m = NGC_TAG.fullmatch(image)
    if not m:
        return [f"{where}: image {image} is not nvcr.io/nvidia/tritonserver:<yy.mm>-py3"]
    hits = advisories_for(m.group(1))
    if hits:
        fixed = max((a.fixed_in for a in hits), key=lambda r: tuple(map(int, r.split("."))))
        ids = ", ".join(a.cve for a in hits[:3])
        release = m.group(1)
        return [
            f"{where}: tritonserver {release} is affected by {len(hits)} advisories ({ids}, ...),"
            f" fixed by {fixed}"
        ]
    return []


def restricted_api_problems(where: str, argv: str) -> list[str]:
    """Both endpoints restrict shared-memory and model-repository, to a key set at run time."""
    problems = []
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        m = re.search(rf"{flag}=(\S+?):[\w-]+=(\S+)", argv)
        if not m:
            problems.append(f"{where}: no {flag} (shared-memory / model-repository open to every client)")
            continue
        apis, value = m.group(1), m.group(2)
        if apis.startswith("$"):  # a shell variable: resolve it from the same script
            a = re.search(rf"\b{re.escape(apis.lstrip('$').strip('{}'))}=(\S+)", argv)
            apis = a.group(1) if a else ""
        missing = [api for api in RESTRICTED_MUST if api not in apis.split(",")]
        if missing:
            problems.append(f"{where}: {flag} leaves {missing} open")
        if not value.startswith("$"):
            problems.append(f"{where}: {flag} key is a literal in the manifest, not drawn at start")
    return problems


def redis_auth_problems(docs: list[Doc]) -> list[str]:
    """Redis: --requirepass from the folio-redis Secret, probes that authenticate; folio's URL carries it."""
    problems = []
    sts = find(docs, "StatefulSet", "folio-redis")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    argv = [*c.get("command", []), *c.get("args", [])]
    passes = [b for a, b in itertools.pairwise(argv) if a == "--requirepass"]
    m = REQUIREPASS_REF.match(passes[0]) if passes else None
    if not m or env_secret(c, m.group(1)) != REDIS_SECRET:
        problems.append(f"redis: no --requirepass $(VAR) with VAR from Secret {'/'.join(REDIS_SECRET)}")
    if env_secret(c, "REDISCLI_AUTH") != REDIS_SECRET:
        problems.append("redis: REDISCLI_AUTH (the probes' password) is not from the Secret")
    for probe in ("readinessProbe", "livenessProbe"):
        cmd = " ".join(c.get(probe, {}).get("exec", {}).get("command", []))
        if "PONG" not in cmd:
            problems.append(f"redis {probe}: `{cmd}` passes on NOAUTH (redis-cli exits 0): require PONG")
    fc = folio_container(docs)
    url = str(env_value(fc, "FOLIO_REDIS_URL") or "")
    m = re.fullmatch(r"rediss?://:\$\((\w+)\)@[\w.-]+:\d+(/\d+)?", url)
    names = [e["name"] for e in fc.get("env", [])]
    if not m:
        problems.append(f"folio: FOLIO_REDIS_URL {url!r} carries no $(VAR) password")
    elif env_secret(fc, m.group(1)) != REDIS_SECRET:
        problems.append(f"folio: {m.group(1)} (in FOLIO_REDIS_URL) is not from the Secret")
    elif names.index(m.group(1)) > names.index("FOLIO_REDIS_URL"):
        problems.append(f"folio: {m.group(1)} is defined after FOLIO_REDIS_URL (the kubelet won't expand it)")
    return problems


@dataclasses.dataclass(frozen=True)
class Peer:
    """A connection's other end: a pod (labels; in the folio namespace or not) or an address (None)."""

    labels: dict[str, str] | None
    here: bool = True


def _matches(selector: Doc | None, labels: dict[str, str]) -> bool:
    selector = selector or {}
    if selector.get("matchExpressions"):
        return True  # not evaluated: assume it may match
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_allowed(peers: list[Doc] | None, peer: Peer) -> bool:
    if not peers:
        return True  # no from/to: any source / destination
    for p in peers:
        if "ipBlock" in p:
            return True  # an address range may cover anything, pods included
        if peer.labels is None:
            continue
        if "namespaceSelector" in p:  # namespace labels unknown here: assume it selects the peer's
            if _matches(p.get("podSelector"), peer.labels):
                return True
        elif peer.here and _matches(p.get("podSelector"), peer.labels):
            return True
    return False


def _port_allowed(ports: list[Doc] | None, port: int, protocol: str, named: dict[str, int]) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        first = named.get(want) if isinstance(want, str) else want
        if first is not None and first <= port <= p.get("endPort", first):
            return True
    return False


def policy_allows(
    docs: list[Doc], direction: str, pod: dict[str, str], peer: Peer, port: int, protocol: str = "TCP"
) -> bool:
    """Does NetworkPolicy let ``pod`` (in the folio namespace) take/open this connection?"""
    pols = []
    for d in docs:
        if d["kind"] != "NetworkPolicy" or not _matches(d["spec"].get("podSelector"), pod):
            continue
        spec = d["spec"]
        types = spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])]
        if direction in types:
            pols.append(spec)
    if not pols:
        return True  # not isolated in this direction
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    owner = pod if direction == "Ingress" else peer.labels  # whose ports a named port refers to
    named = {
        p["name"]: p["containerPort"]
        for w in workloads(docs)
        if pod_labels(w) == owner
        for c in containers(w["spec"]["template"]["spec"])
        for p in c.get("ports", [])
        if "name" in p
    }
    return any(
        _port_allowed(rule.get("ports"), port, protocol, named) and _peer_allowed(rule.get(peers), peer)
        for spec in pols
        for rule in spec.get(key, [])
    )


def network_problems(docs: list[Doc]) -> list[str]:
    """A default deny; Redis and Triton take connections from the folio pods only; folio still works."""
    problems = []
    folio = pod_labels(find(docs, "Deployment", "folio"))
    redis = pod_labels(find(docs, "StatefulSet", "folio-redis"))
    triton = pod_labels(find(docs, "Deployment", "folio-triton"))
    deny = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and not d["spec"].get("podSelector")
        and {"Ingress", "Egress"} <= set(d["spec"].get("policyTypes", []))
        and not d["spec"].get("ingress")
        and not d["spec"].get("egress")
    ]
    if not deny:
        problems.append("no default-deny NetworkPolicy (podSelector {}, Ingress + Egress, no rules)")
    outsiders = {
        "another pod in the namespace": Peer({"app.kubernetes.io/name": "intruder"}),
        "a pod in another namespace": Peer(dict(folio), here=False),
        "an address outside the cluster": Peer(None, here=False),
    }
    for name, labels, ports in (("redis", redis, (6379,)), ("triton", triton, (8000, 8001, 8002))):
        for port in ports:
            for who, peer in outsiders.items():
                if policy_allows(docs, "Ingress", labels, peer, port):
                    problems.append(f"{name} accepts port {port} from {who}")
    for name, labels, port in (("redis", redis, 6379), ("triton", triton, 8001)):
        if not (
            policy_allows(docs, "Egress", folio, Peer(labels), port)
            and policy_allows(docs, "Ingress", labels, Peer(folio), port)
        ):
            problems.append(f"folio pods cannot reach {name} on {port}")
    dns = Peer({"k8s-app": "kube-dns"}, here=False)
    if not policy_allows(docs, "Egress", folio, dns, 53, "UDP"):
        problems.append("folio pods cannot resolve names (egress to port 53/UDP)")
    if not policy_allows(docs, "Ingress", folio, Peer(None, here=False), 3000):
        problems.append("the folio API (3000) is not reachable")
    return problems


def retrain_problems(docs: list[Doc]) -> list[str]:
    """The retrain CronJob: never two at once, the folio pods' model store, Redis reachable."""
    cron = find(docs, "CronJob", "folio-retrain")
    job = cron["spec"]["jobTemplate"]["spec"]
    (c,) = job["template"]["spec"]["containers"]
    problems = []
    if cron["spec"].get("concurrencyPolicy") != "Forbid":
        problems.append("retrain: concurrencyPolicy is not Forbid (two trainings would run at once)")
    stores = {}
    for name, pod, container in (
        ("folio", find(docs, "Deployment", "folio")["spec"]["template"]["spec"], folio_container(docs)),
        ("retrain", job["template"]["spec"], c),
    ):
        claims = {
            v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod.get("volumes", [])
        }
        path = str(env_value(container, "FOLIO_MODEL_STORE") or "")
        mounts = [
            m for m in container.get("volumeMounts", []) if claims.get(m["name"]) == "folio-model-store"
        ]
        if not any(path.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts):
            problems.append(f"{name}: FOLIO_MODEL_STORE {path!r} is not on the folio-model-store volume")
        stores[name] = path
    if stores["folio"] != stores["retrain"]:
        problems.append(f"FOLIO_MODEL_STORE differs: {stores} (the pods would not see promotions)")
    retrain = job["template"]["metadata"]["labels"]
    redis = pod_labels(find(docs, "StatefulSet", "folio-redis"))
    if not (
        policy_allows(docs, "Egress", retrain, Peer(redis), 6379)
        and policy_allows(docs, "Ingress", redis, Peer(retrain), 6379)
    ):
        problems.append("the retrain job cannot reach redis on 6379")
    if env_secret(c, "REDIS_PASSWORD") != REDIS_SECRET:
        problems.append("retrain: REDIS_PASSWORD is not from the Secret")
    return problems


def triton_exposure_problems(docs: list[Doc]) -> list[str]:
    (c,) = find(docs, "Deployment", "folio-triton")["spec"]["template"]["spec"]["containers"]
    argv = " ".join([*c.get("command", []), *c.get("args", [])])
    return ngc_release_problems("triton", c["image"]) + restricted_api_problems("triton", argv)


K8S_POLICIES: list[Callable[[list[Doc]], list[str]]] = [
    security_problems,
    folio_problems,
    secret_problems,
    selector_problems,
    redis_problems,
    triton_problems,
    redis_auth_problems,
    network_problems,
    triton_exposure_problems,
    retrain_problems,
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
    return problems + compose_exposure_problems(spec)


LOOPBACK = ("127.0.0.1", "::1", "[::1]", "localhost")
INTERPOLATED = re.compile(r"\$\{(\w+)")


def published_beyond_loopback(port: str | int | Doc) -> bool:
    """A ``ports:`` entry that listens on more than the host's loopback (short or long syntax)."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")) not in LOOPBACK
    text = str(port)
    return not any(text.startswith(f"{ip}:") for ip in LOOPBACK)


def service_networks(svc: Doc) -> list[str]:
    nets = svc.get("networks")
    if nets is None:
        return ["default"]
    return list(nets) if isinstance(nets, dict | list) else []


def argv_text(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value or "")


def compose_exposure_problems(spec: Doc) -> list[str]:
    """Triton and Redis: not published beyond loopback, only on internal networks shared with folio;
    Redis authenticates; Triton is a release without recorded advisories, with its admin APIs off."""
    problems = []
    services = spec.get("services", {})
    networks = spec.get("networks") or {}
    folio_nets = set(service_networks(services.get("folio", {})))
    for name in ("triton", "redis"):
        svc = services.get(name)
        if svc is None:
            continue
        if svc.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host exposes every port it opens")
        for port in svc.get("ports", []):
            if published_beyond_loopback(port):
                problems.append(f"{name}: publishes {port!r} beyond the host's loopback")
        nets = service_networks(svc)
        for net in nets:
            if not (networks.get(net) or {}).get("internal"):
                problems.append(f"{name}: on network {net!r}, which is not internal")
        if not folio_nets & set(nets):
            problems.append(f"{name}: shares no network with folio")
    redis = services.get("redis", {})
    argv = redis.get("command", [])
    argv = argv.split() if isinstance(argv, str) else [str(a) for a in argv]
    passes = [b for a, b in itertools.pairwise(argv) if a == "--requirepass"]
    var = INTERPOLATED.match(passes[0]) if passes else None
    if not var:
        problems.append("redis: no --requirepass ${VAR} (a password from the environment)")
    else:
        env = services.get("folio", {}).get("environment", {})
        url = str(env.get("FOLIO_REDIS_URL", "")) if isinstance(env, dict) else ""
        if not re.match(rf"rediss?://:\$\{{{var.group(1)}\b[^}}]*\}}@", url):
            problems.append(f"folio: FOLIO_REDIS_URL {url!r} does not carry ${{{var.group(1)}}}")
        renv = redis.get("environment", {})
        auth = str(renv.get("REDISCLI_AUTH", "")) if isinstance(renv, dict) else ""
        if not auth.startswith(f"${{{var.group(1)}"):
            problems.append("redis: REDISCLI_AUTH (the healthcheck's password) is not the same variable")
    if "PONG" not in argv_text(redis.get("healthcheck", {}).get("test")):
        problems.append("redis: the healthcheck passes on NOAUTH (redis-cli exits 0): require PONG")
    triton = services.get("triton")
    if triton is not None:
        problems += ngc_release_problems("triton", str(triton.get("image", "")))
        script = argv_text(triton.get("command")).replace("$$", "$")
        problems += restricted_api_problems("triton", script)
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


def redis_container(docs: list[Doc]) -> Doc:
    return find(docs, "StatefulSet", "folio-redis")["spec"]["template"]["spec"]["containers"][0]


def triton_container(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", "folio-triton")["spec"]["template"]["spec"]["containers"][0]


def netpol_ingress(docs: list[Doc], name: str) -> list[Doc]:
    rules: list[Doc] = find(docs, "NetworkPolicy", name)["spec"]["ingress"]
    return rules


def retrain_job(docs: list[Doc]) -> Doc:
    return find(docs, "CronJob", "folio-retrain")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


K8S_BREAKAGES: list[tuple[str, Callable[[list[Doc]], Any], str]] = [
    (
        "retrain-overlap",
        lambda d: find(d, "CronJob", "folio-retrain")["spec"].update(concurrencyPolicy="Allow"),
        "Forbid",
    ),
    (
        "retrain-other-store",
        lambda d: set_env(retrain_job(d)["containers"][0], "FOLIO_MODEL_STORE", value="/models/other"),
        "FOLIO_MODEL_STORE differs",
    ),
    (
        "retrain-store-off-volume",
        lambda d: set_env(folio_container(d), "FOLIO_MODEL_STORE", value="/tmp/store"),
        "not on the folio-model-store volume",
    ),
    (
        "retrain-no-redis",
        lambda d: find(d, "NetworkPolicy", "folio-redis")["spec"]["ingress"][0]["from"].pop(),
        "retrain job cannot reach redis",
    ),
    (
        "retrain-root",
        lambda d: retrain_job(d)["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
        "CronJob/folio-retrain/retrain: readOnlyRootFilesystem",
    ),
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
    # exposure: Redis authentication
    ("redis-no-password", lambda d: redis_container(d).update(args=["--appendonly", "yes"]), "--requirepass"),
    (
        "redis-literal-password",
        lambda d: redis_container(d).update(args=["--appendonly", "yes", "--requirepass", "hunter2"]),
        "--requirepass",
    ),
    (
        "redis-probe-no-pong",
        lambda d: redis_container(d)["readinessProbe"]["exec"].update(command=["redis-cli", "ping"]),
        "require PONG",
    ),
    (
        "url-no-password",
        lambda d: set_env(folio_container(d), "FOLIO_REDIS_URL", value="redis://folio-redis:6379/0"),
        "FOLIO_REDIS_URL",
    ),
    (
        "url-password-after",
        lambda d: folio_container(d).update(
            env=[e for e in folio_container(d)["env"] if e["name"] != "REDIS_PASSWORD"]
            + [e for e in folio_container(d)["env"] if e["name"] == "REDIS_PASSWORD"]
        ),
        "defined after FOLIO_REDIS_URL",
    ),
    # exposure: NetworkPolicies
    ("no-default-deny", lambda d: d.remove(find(d, "NetworkPolicy", "folio-default-deny")), "default-deny"),
    (
        "redis-from-any-namespace",
        lambda d: netpol_ingress(d, "folio-redis")[0]["from"].append({"namespaceSelector": {}}),
        "redis accepts port 6379 from a pod in another namespace",
    ),
    (
        "triton-from-anyone",
        lambda d: netpol_ingress(d, "folio-triton")[0].pop("from"),
        "triton accepts port 8001 from another pod in the namespace",
    ),
    (
        "triton-metrics-for-all",
        lambda d: netpol_ingress(d, "folio-triton").append({"ports": [{"port": 8002}]}),
        "triton accepts port 8002 from an address outside the cluster",
    ),
    (
        "redis-not-selected",
        lambda d: d.remove(find(d, "NetworkPolicy", "folio-redis")),
        "folio pods cannot reach redis",
    ),
    (
        "folio-egress-no-triton",
        lambda d: find(d, "NetworkPolicy", "folio-api")["spec"]["egress"].pop(1),
        "folio pods cannot reach triton",
    ),
    (
        "folio-egress-no-dns",
        lambda d: find(d, "NetworkPolicy", "folio-api")["spec"]["egress"].pop(2),
        "resolve names",
    ),
    (
        "folio-api-closed",
        lambda d: find(d, "NetworkPolicy", "folio-api")["spec"].pop("ingress"),
        "folio API (3000)",
    ),
    # exposure: the Triton release and its admin APIs
    (
        "triton-24.10",
        lambda d: triton_container(d).update(image="nvcr.io/nvidia/tritonserver:24.10-py3"),
        "affected by",
    ),
    (
        "triton-shm-open",
        lambda d: triton_container(d).update(
            args=[a.replace("shared-memory,", "") for a in triton_container(d)["args"]]
        ),
        "leaves ['shared-memory'] open",
    ),
    (
        "triton-literal-key",
        lambda d: triton_container(d).update(
            args=[a.replace("=$key", "=letmein") for a in triton_container(d)["args"]]
        ),
        "literal",
    ),
    (
        "triton-unrestricted",
        lambda d: triton_container(d).update(args=["tritonserver", "--model-repository=/models"]),
        "--grpc-restricted-protocol",
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
    assert folio["environment"]["FOLIO_REDIS_URL"].endswith("@redis:6379/0")
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
    # exposure
    (
        "triton-published",
        lambda s: s["services"]["triton"].update(ports=["8001:8001"]),
        "triton: publishes '8001:8001' beyond",
    ),
    (
        "triton-published-long",
        lambda s: s["services"]["triton"].update(ports=[{"target": 8000, "published": 8000}]),
        "triton: publishes",
    ),
    ("redis-published", lambda s: s["services"]["redis"].update(ports=["6379:6379"]), "redis: publishes"),
    ("triton-host-network", lambda s: s["services"]["triton"].update(network_mode="host"), "network_mode"),
    ("triton-default-network", lambda s: s["services"]["triton"].pop("networks"), "'default'"),
    ("backend-routed", lambda s: s["networks"]["backend"].pop("internal"), "not internal"),
    ("folio-off-backend", lambda s: s["services"]["folio"].update(networks=["frontend"]), "no network"),
    (
        "redis-no-password",
        lambda s: s["services"]["redis"].update(command=["redis-server", "--appendonly", "yes"]),
        "--requirepass",
    ),
    (
        "redis-literal-password",
        lambda s: s["services"]["redis"].update(
            command=["redis-server", "--appendonly", "yes", "--requirepass", "hunter2"]
        ),
        "--requirepass",
    ),
    (
        "url-no-password",
        lambda s: folio_env(s).update(FOLIO_REDIS_URL="redis://redis:6379/0"),
        "FOLIO_REDIS_URL",
    ),
    (
        "healthcheck-no-pong",
        lambda s: s["services"]["redis"]["healthcheck"].update(test=["CMD", "redis-cli", "ping"]),
        "PONG",
    ),
    ("cli-no-auth", lambda s: s["services"]["redis"].pop("environment"), "REDISCLI_AUTH"),
    (
        "triton-24.10",
        lambda s: s["services"]["triton"].update(image="nvcr.io/nvidia/tritonserver:24.10-py3"),
        "affected by",
    ),
    (
        "triton-unrestricted",
        lambda s: s["services"]["triton"].update(command=["tritonserver", "--model-repository=/models"]),
        "--http-restricted-api",
    ),
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


def test_compose_loopback_publishing_is_allowed(compose: Doc) -> None:
    """Publishing Triton's metrics on the host's loopback only is fine; 0.0.0.0 is not."""
    ok = copy.deepcopy(compose)
    ok["services"]["triton"]["ports"] = ["127.0.0.1:8002:8002", {"target": 8001, "host_ip": "127.0.0.1"}]
    assert compose_problems(ok) == []
    ok["services"]["triton"]["ports"] = ["0.0.0.0:8002:8002"]
    assert any("beyond the host's loopback" in p for p in compose_problems(ok))


def test_network_policy_evaluator() -> None:
    """The evaluator the network policy relies on, on hand-made policies with known answers."""
    api = {"app": "api"}
    db = {"app": "db"}
    docs: list[Doc] = [
        {
            "kind": "NetworkPolicy",
            "metadata": {"name": "db"},
            "spec": {
                "podSelector": {"matchLabels": db},
                "ingress": [{"from": [{"podSelector": {"matchLabels": api}}], "ports": [{"port": 5432}]}],
            },
        }
    ]
    assert policy_allows(docs, "Ingress", db, Peer(api), 5432)
    assert not policy_allows(docs, "Ingress", db, Peer(api), 5433)
    assert not policy_allows(docs, "Ingress", db, Peer({"app": "x"}), 5432)
    assert not policy_allows(docs, "Ingress", db, Peer(api, here=False), 5432)  # same labels, other ns
    assert not policy_allows(docs, "Ingress", db, Peer(None, here=False), 5432)
    assert policy_allows(docs, "Egress", db, Peer(None, here=False), 443)  # not isolated for egress
    assert policy_allows(docs, "Ingress", api, Peer(None, here=False), 80)  # api not selected at all
    docs[0]["spec"]["ingress"][0]["from"].append({"namespaceSelector": {"matchLabels": {"team": "x"}}})
    assert policy_allows(docs, "Ingress", db, Peer({"app": "x"}, here=False), 5432)
    docs[0]["spec"]["ingress"][0]["from"] = [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    assert policy_allows(docs, "Ingress", db, Peer(None, here=False), 5432)
