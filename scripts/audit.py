"""Dependency audit of what Folio ships, with a result that can say "I could not tell".

    python scripts/audit.py lock            # write deploy/requirements/serving-{cpu,gpu}.txt
    python scripts/audit.py lock --check    # exit 1 if serving-cpu.txt differs from this environment
    python scripts/audit.py                 # audit the pins + the Triton releases Folio runs
    python scripts/audit.py --json out.json

Python packages: pip-audit (``pip install pip-audit``; not a project dependency) runs over each lock file
with ``--no-deps --disable-pip`` (the files are fully pinned), once per vulnerability service (PyPI's
JSON API, then OSV). pip-audit prints "No known vulnerabilities found" and exits 0 when it skipped every
package because the service answered 404 (a registry mirror without the per-version JSON API), and
dies with a traceback when the service's host does not resolve. Neither is a pass: a package counts as
audited only when some service returned an answer for that exact version.

Triton: the NGC image tags in deploy/ and the tritonserver that the nvidia-pytriton wheel bundles are
checked against NVIDIA's Triton security bulletins recorded below (``ADVISORIES``, as of
``ADVISORIES_AS_OF``); pip-audit can't see them (they are filed against the product, not a PyPI package).

Result, per part and overall: "vulnerabilities found" (exit 1) > "NO RESULT" (exit 3) > "none found"
(exit 0). Anything not audited makes the result NO RESULT, never "none found".
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import enum
import importlib.metadata as md
import json
import platform
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runners.platform.bento_image import (  # noqa: E402 - needs ROOT on sys.path when run as a script
    FLAVOURS,
    PYTHON_VERSION,
    declared_dependencies,
    lock_path,
    read_lock,
)

PYPROJECT = ROOT / "pyproject.toml"
SERVICES = ("pypi", "osv")
TRITON_MANIFESTS = (ROOT / "deploy" / "compose.yaml", ROOT / "deploy" / "k8s" / "triton-deployment.yaml")
NGC_TAG = re.compile(r"nvcr\.io/nvidia/tritonserver:(\d{2}\.\d{2})-py3")


class Outcome(enum.Enum):
    VULNERABLE = "vulnerabilities found"
    NO_RESULT = "NO RESULT"
    CLEAN = "none found"

    @property
    def exit_code(self) -> int:
        return {Outcome.VULNERABLE: 1, Outcome.NO_RESULT: 3, Outcome.CLEAN: 0}[self]


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    """VULNERABLE beats NO_RESULT beats CLEAN; nothing at all is NO_RESULT."""
    seen = set(outcomes)
    for o in (Outcome.VULNERABLE, Outcome.NO_RESULT, Outcome.CLEAN):
        if o in seen:
            return o
    return Outcome.NO_RESULT


# ------------------------------------------------------------------------------------------- locks
def serving_closure(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """[project] dependencies and everything they require, as installed here (markers evaluated)."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    stack: list[tuple[Requirement, tuple[str, ...]]] = [(Requirement(d), ("",)) for d in deps]
    while stack:
        req, extras = stack.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        dist = md.distribution(req.name)
        name = canonicalize_name(dist.metadata["Name"])
        if not req.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"installed {name} {dist.version} does not satisfy {req}")
        key = (name, frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        pins[name] = dist.version
        stack.extend((Requirement(r), ("", *req.extras)) for r in dist.requires or [])
    return pins


def _check_platform() -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != PYTHON_VERSION or sys.platform != "linux" or platform.machine() != "x86_64":
        raise SystemExit(
            f"lock files pin for Python {PYTHON_VERSION} on linux x86_64 (the image); this is Python "
            f"{here} on {sys.platform} {platform.machine()}"
        )


def lock_text(flavour: str, pins: dict[str, str]) -> str:
    how = {
        "cpu": "the versions installed in the environment that ran it",
        "gpu": "pip's resolution with the cpu pins as constraints",
    }[flavour]
    header = [
        f"# Folio serving image, {flavour} flavour: pyproject.toml's dependencies"
        + (" (gpu extra in place of faiss-cpu/onnxruntime)" if flavour == "gpu" else "")
        + " and everything",
        f"# they pull in, at {how}.",
        f"# Python {PYTHON_VERSION}, linux x86_64. Generated by `python scripts/audit.py lock`; do not edit.",
        "# runners/platform/bento_image.py installs exactly these lines; scripts/audit.py audits them.",
    ]
    return "\n".join([*header, *(f"{n}=={v}" for n, v in sorted(pins.items()))]) + "\n"


def gpu_closure(cpu_pins: dict[str, str], pyproject: Path = PYPROJECT) -> dict[str, str]:
    """Resolve the gpu flavour with pip (needs the package index), constrained to the cpu pins."""
    from runners.platform.bento_image import _CPU_ONLY

    constraints = {n: v for n, v in cpu_pins.items() if n not in _CPU_ONLY}
    with tempfile.TemporaryDirectory() as tmp:
        cfile, report = Path(tmp, "constraints.txt"), Path(tmp, "report.json")
        cfile.write_text("".join(f"{n}=={v}\n" for n, v in sorted(constraints.items())))
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        argv += ["--report", str(report), "-c", str(cfile), *declared_dependencies(pyproject, "gpu")]
        subprocess.run(argv, check=True)
        data = json.loads(report.read_text())
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}


def cmd_lock(args: argparse.Namespace) -> int:
    _check_platform()
    cpu = serving_closure()
    cpu_file = lock_path(ROOT, "cpu")
    if args.check:
        current = read_lock(cpu_file) if cpu_file.is_file() else {}
        if current == cpu:
            print(f"{cpu_file.relative_to(ROOT)}: matches this environment ({len(cpu)} pins)")
            return 0
        changed = sorted(set(current.items()) ^ set(cpu.items()))
        print(f"{cpu_file.relative_to(ROOT)} differs from this environment: {changed}")
        return 1
    cpu_file.parent.mkdir(parents=True, exist_ok=True)
    cpu_file.write_text(lock_text("cpu", cpu))
    print(f"wrote {cpu_file.relative_to(ROOT)} ({len(cpu)} pins)")
    if not args.no_gpu:
        gpu = gpu_closure(cpu)
        gpu_file = lock_path(ROOT, "gpu")
        gpu_file.write_text(lock_text("gpu", gpu))
        print(f"wrote {gpu_file.relative_to(ROOT)} ({len(gpu)} pins)")
    return 0


# ------------------------------------------------------------------------------- pip-audit parsing
@dataclasses.dataclass
class Vuln:
    id: str
    aliases: list[str]
    fix_versions: list[str]


@dataclasses.dataclass
class ServiceRun:
    """What one pip-audit run over one lock file established."""

    service: str
    audited: dict[str, list[Vuln]]  # canonical name -> vulnerabilities of the pinned version
    skipped: dict[str, str]  # canonical name -> pip-audit's skip reason (or "not in the output")
    error: str | None = None  # set when pip-audit gave no parseable report at all


def parse_pip_audit(
    service: str, stdout: str, stderr: str, returncode: int, expected: Iterable[str]
) -> ServiceRun:
    """Turn one pip-audit ``--format json`` run into audited / skipped packages.

    A dependency with ``skip_reason`` was not audited (pip-audit still says "No known vulnerabilities
    found" and exits 0 when every one was skipped). No JSON on stdout means the run failed (e.g. the
    service's host does not resolve: a traceback, exit 1): nothing was audited.
    """
    names = [str(canonicalize_name(n)) for n in expected]
    try:
        data = json.loads(stdout)
        deps = data["dependencies"]
    except (json.JSONDecodeError, KeyError, TypeError):
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip-audit exited {returncode} without output"
        return ServiceRun(service, {}, dict.fromkeys(names, "pip-audit failed"), error=reason[:300])
    audited: dict[str, list[Vuln]] = {}
    skipped: dict[str, str] = {}
    for dep in deps:
        name = str(canonicalize_name(dep["name"]))
        if dep.get("skip_reason"):
            skipped[name] = dep["skip_reason"]
            continue
        audited[name] = [
            Vuln(v["id"], list(v.get("aliases", [])), list(v.get("fix_versions", [])))
            for v in dep.get("vulns", [])
        ]
    for name in names:
        if name not in audited and name not in skipped:
            skipped[name] = "not in pip-audit's output"
    return ServiceRun(service, audited, skipped)


@dataclasses.dataclass
class PythonResult:
    outcome: Outcome
    summary: str
    vulnerable: dict[str, list[Vuln]]
    unaudited: list[str]
    runs: list[ServiceRun]


def combine(pins: dict[str, str], runs: Sequence[ServiceRun]) -> PythonResult:
    """A package is audited if any service answered for it; anything unaudited means NO RESULT."""
    names = set(pins)
    covered: set[str] = set()
    vulnerable: dict[str, list[Vuln]] = {}
    for run in runs:
        for name, vulns in run.audited.items():
            covered.add(name)
            if vulns:
                vulnerable.setdefault(name, []).extend(v for v in vulns if v not in vulnerable.get(name, []))
    unaudited = sorted(names - covered)
    if vulnerable:
        outcome = Outcome.VULNERABLE
        summary = f"{len(vulnerable)} of {len(names)} pinned packages have known vulnerabilities"
        if unaudited:
            summary += f"; {len(unaudited)} more could not be audited"
    elif not names:
        outcome, summary = Outcome.NO_RESULT, "nothing to audit"
    elif unaudited:
        outcome = Outcome.NO_RESULT
        if not covered:
            summary = f"no advisory source answered: 0 of {len(names)} pinned packages audited"
        else:
            summary = (
                f"{len(unaudited)} of {len(names)} pinned packages could not be audited "
                f"(none vulnerable among the {len(covered)} that were)"
            )
    else:
        outcome, summary = Outcome.CLEAN, f"all {len(names)} pinned packages audited, none vulnerable"
    return PythonResult(outcome, summary, vulnerable, unaudited, list(runs))


def run_pip_audit(lock: Path, service: str, expected: Iterable[str], timeout_s: float = 600) -> ServiceRun:
    argv = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--no-deps", "--disable-pip"]
    argv += ["--progress-spinner", "off", "--format", "json", "--vulnerability-service", service]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return ServiceRun(
            service, {}, dict.fromkeys(expected, "timeout"), error=f"timed out after {timeout_s}s"
        )
    if proc.returncode != 0 and "No module named pip_audit" in proc.stderr:
        return ServiceRun(
            service, {}, dict.fromkeys(expected, "pip-audit missing"), error="pip-audit missing"
        )
    return parse_pip_audit(service, proc.stdout, proc.stderr, proc.returncode, expected)


# ------------------------------------------------------------------------------------------ Triton
@dataclasses.dataclass(frozen=True)
class Advisory:
    cve: str
    bulletin: str  # NVIDIA bulletin id (nvidia.custhelp.com a_id / NVIDIA/product-security folder)
    published: str
    fixed_in: str  # first NGC release (yy.mm) with the fix
    cvss: float
    component: str  # "core", "python backend", "DALI backend", "MLflow plugin"
    affected_from: str = "00.00"


# NVIDIA's Triton bulletins published after 24.10 (the release the pytriton 0.7.0 wheel bundles and
# deploy/ used to pin), from NVIDIA/product-security: 5612, 5687, 5691, 5723, 5734, 5790, 5816, 5828,
# 5848, 5853, 5860, 5865, 5875. Updated version = the "Updated Version" column of each bulletin.
ADVISORIES_AS_OF = "2026-09-08"
_A = Advisory
ADVISORIES: tuple[Advisory, ...] = (
    _A("CVE-2024-53880", "5612", "2025-02-11", "24.12", 4.9, "core", affected_from="24.11"),
    _A("CVE-2025-23310", "5687", "2025-08-04", "25.07", 9.8, "core"),
    _A("CVE-2025-23311", "5687", "2025-08-04", "25.07", 9.8, "core"),
    _A("CVE-2025-23317", "5687", "2025-08-04", "25.07", 9.1, "core"),
    _A("CVE-2025-23318", "5687", "2025-08-04", "25.07", 8.1, "python backend"),
    _A("CVE-2025-23319", "5687", "2025-08-04", "25.07", 8.1, "python backend"),
    _A("CVE-2025-23268", "5687", "2025-08-04", "25.07", 8.0, "DALI backend"),
    _A("CVE-2025-23320", "5687", "2025-08-04", "25.07", 7.5, "python backend"),
    _A("CVE-2025-23321", "5687", "2025-08-04", "25.07", 7.5, "core"),
    _A("CVE-2025-23322", "5687", "2025-08-04", "25.06", 7.5, "core"),
    _A("CVE-2025-23323", "5687", "2025-08-04", "25.05", 7.5, "core"),
    _A("CVE-2025-23324", "5687", "2025-08-04", "25.05", 7.5, "core"),
    _A("CVE-2025-23325", "5687", "2025-08-04", "25.05", 7.5, "core"),
    _A("CVE-2025-23326", "5687", "2025-08-04", "25.05", 7.5, "core"),
    _A("CVE-2025-23327", "5687", "2025-08-04", "25.05", 7.5, "core"),
    _A("CVE-2025-23331", "5687", "2025-08-04", "25.06", 7.5, "core"),
    _A("CVE-2025-23333", "5687", "2025-08-04", "25.07", 5.9, "python backend"),
    _A("CVE-2025-23334", "5687", "2025-08-04", "25.07", 5.9, "python backend"),
    _A("CVE-2025-23335", "5687", "2025-08-04", "25.05", 4.4, "core"),
    _A("CVE-2025-23316", "5691", "2025-09-16", "25.08", 9.8, "python backend"),
    _A("CVE-2025-23328", "5691", "2025-09-16", "25.08", 7.5, "core"),
    _A("CVE-2025-23329", "5691", "2025-09-16", "25.08", 7.5, "python backend"),
    _A("CVE-2025-23336", "5691", "2025-09-16", "25.08", 4.4, "core"),
    _A("CVE-2025-33202", "5723", "2025-11-11", "25.09", 7.5, "core"),
    _A("CVE-2025-33211", "5734", "2025-12-02", "25.10", 7.5, "core"),
    _A("CVE-2025-33201", "5734", "2025-12-02", "25.10", 7.5, "core"),
    _A("CVE-2025-33238", "5790", "2026-03-24", "26.01", 7.5, "core"),
    _A("CVE-2025-33254", "5790", "2026-03-24", "26.01", 7.5, "core"),
    _A("CVE-2026-24158", "5790", "2026-03-24", "26.01", 7.5, "core"),
    _A("CVE-2026-24146", "5816", "2026-04-07", "26.02", 7.5, "core"),
    _A("CVE-2026-24173", "5816", "2026-04-07", "26.02", 7.5, "core"),
    _A("CVE-2026-24174", "5816", "2026-04-07", "26.02", 7.5, "core"),
    _A("CVE-2026-24175", "5816", "2026-04-07", "26.02", 7.5, "core"),
    _A("CVE-2026-24147", "5816", "2026-04-07", "26.02", 4.8, "core"),
    _A("CVE-2026-24207", "5828", "2026-05-19", "26.03", 9.8, "core"),
    _A("CVE-2026-24213", "5828", "2026-05-19", "26.03", 8.0, "DALI backend"),
    _A("CVE-2026-24214", "5828", "2026-05-19", "26.03", 8.0, "DALI backend"),
    _A("CVE-2026-24209", "5828", "2026-05-19", "26.03", 7.5, "core"),
    _A("CVE-2026-24210", "5828", "2026-05-19", "26.03", 7.5, "core"),
    _A("CVE-2026-24206", "5828", "2026-05-19", "26.03", 7.3, "core"),
    _A("CVE-2026-24215", "5828", "2026-05-19", "26.03", 5.7, "DALI backend"),
    _A("CVE-2026-24208", "5828", "2026-05-19", "26.03", 5.3, "core"),
    _A("CVE-2026-24264", "5848", "2026-06-30", "26.04", 7.5, "core"),
    _A("CVE-2026-24266", "5848", "2026-06-30", "26.04", 5.9, "core"),
    _A("CVE-2026-47476", "5853", "2026-07-14", "26.05", 7.5, "core"),
    _A("CVE-2026-47477", "5853", "2026-07-14", "26.05", 7.5, "core"),
    _A("CVE-2026-47478", "5853", "2026-07-14", "26.05", 7.5, "core"),
    _A("CVE-2026-47479", "5853", "2026-07-14", "26.05", 7.5, "core"),
    _A("CVE-2026-47480", "5853", "2026-07-14", "26.05", 7.5, "core"),
    _A("CVE-2026-47482", "5853", "2026-07-14", "26.05", 7.5, "core"),
    _A("CVE-2026-47481", "5853", "2026-07-14", "26.05", 6.5, "core"),
    _A("CVE-2026-47487", "5860", "2026-08-04", "26.03", 4.4, "MLflow plugin"),
    _A("CVE-2026-47627", "5865", "2026-08-18", "26.06", 9.8, "core"),
    _A("CVE-2026-47628", "5865", "2026-08-18", "26.06", 7.5, "core"),
    _A("CVE-2026-47629", "5865", "2026-08-18", "26.06", 7.5, "core"),
    _A("CVE-2026-47606", "5865", "2026-08-18", "26.06", 6.5, "core"),
    _A("CVE-2026-47630", "5865", "2026-08-18", "26.06", 5.5, "core"),
    _A("CVE-2026-47625", "5875", "2026-09-08", "26.04", 7.5, "core"),
    _A("CVE-2026-16497", "5875", "2026-09-08", "26.07", 7.5, "core"),
)
# Components Folio never loads (no DALI models, no MLflow plugin): listed, not counted.
NOT_USED = {"DALI backend", "MLflow plugin"}
# tritonserver version (server metadata) -> NGC release, where a stored source states it.
TRITON_RELEASES = {"2.51.0": "24.10", "2.59.1": "25.07", "2.75.0": "26.11"}


def _release(text: str) -> tuple[int, int]:
    yy, mm = text.split(".")
    return int(yy), int(mm)


def advisories_for(release: str) -> list[Advisory]:
    """Recorded advisories that affect NGC release ``release`` (yy.mm) in a component Folio uses."""
    r = _release(release)
    return [
        a
        for a in ADVISORIES
        if a.component not in NOT_USED and _release(a.affected_from) <= r < _release(a.fixed_in)
    ]


@dataclasses.dataclass
class TritonTarget:
    what: str
    release: str | None
    outcome: Outcome
    advisories: list[Advisory]
    note: str


def check_triton_release(what: str, release: str | None, note: str = "") -> TritonTarget:
    if release is None:
        return TritonTarget(what, None, Outcome.NO_RESULT, [], note or "release unknown")
    found = advisories_for(release)
    if found:
        return TritonTarget(what, release, Outcome.VULNERABLE, found, note)
    return TritonTarget(
        what, release, Outcome.CLEAN, [], note or f"no recorded bulletin (up to {ADVISORIES_AS_OF}) applies"
    )


def ngc_tags(paths: Iterable[Path] = TRITON_MANIFESTS) -> dict[str, list[str]]:
    """NGC release -> the deploy files that pin it."""
    tags: dict[str, list[str]] = {}
    for path in paths:
        for tag in NGC_TAG.findall(path.read_text()):
            tags.setdefault(tag, []).append(str(path.relative_to(ROOT)))
    return tags


def embedded_triton_version() -> str:
    """Start the wheel's tritonserver on loopback with an empty repository; read /v2 metadata."""
    import urllib.request

    from runners.triton.server import TritonServer

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp, "repo")
        repo.mkdir()
        with TritonServer(log_file=Path(tmp, "t.log"), work_dir=Path(tmp, "w")) as server:
            server.start(repo)
            with urllib.request.urlopen(f"http://{server.http_url}/v2", timeout=5) as resp:
                return str(json.load(resp)["version"])


def triton_targets(probe_embedded: bool = True) -> list[TritonTarget]:
    targets = [
        check_triton_release(f"nvcr.io/nvidia/tritonserver:{tag}-py3 ({', '.join(files)})", tag)
        for tag, files in sorted(ngc_tags().items())
    ]
    try:
        pytriton = md.version("nvidia-pytriton")
    except md.PackageNotFoundError:
        return targets
    what = f"embedded tritonserver (nvidia-pytriton {pytriton})"
    if not probe_embedded:
        targets.append(check_triton_release(what, None, "not probed (--no-embedded)"))
        return targets
    try:
        version = embedded_triton_version()
    except Exception as exc:  # no result, not a pass
        targets.append(check_triton_release(what, None, f"could not start it to read its version: {exc}"))
        return targets
    release = TRITON_RELEASES.get(version)
    note = "" if release else f"server version {version} has no recorded NGC release"
    targets.append(check_triton_release(f"{what}, server {version}", release, note))
    return targets


# ---------------------------------------------------------------------------------------- reporting
def cmd_audit(args: argparse.Namespace) -> int:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"Folio dependency audit, {when}")
    pins: dict[str, str] = {}
    runs: list[ServiceRun] = []
    for flavour in FLAVOURS:
        lock = lock_path(ROOT, flavour)
        if not lock.is_file():
            print(f"  {lock.relative_to(ROOT)}: missing (python scripts/audit.py lock)")
            continue
        flavour_pins = read_lock(lock)
        pins.update({f"{n}=={v}": v for n, v in flavour_pins.items()})
        for service in args.service or SERVICES:
            run = run_pip_audit(lock, service, flavour_pins)
            # key audited/skipped by name==version: cpu and gpu pins of one name may differ
            run.audited = {f"{n}=={flavour_pins[n]}": v for n, v in run.audited.items() if n in flavour_pins}
            run.skipped = {f"{n}=={flavour_pins.get(n, '?')}": r for n, r in run.skipped.items()}
            runs.append(run)
            detail = f"failed: {run.error}" if run.error else ""
            if not detail:
                reasons = sorted(set(run.skipped.values()))
                detail = f"audited {len(run.audited)}, skipped {len(run.skipped)}"
                if reasons:
                    detail += f" (e.g. {reasons[0]!r})"
            print(f"  pip-audit -s {service} {lock.relative_to(ROOT)}: {detail}")
    py = combine(pins, runs)
    print(f"python packages: {py.outcome.value}: {py.summary}")
    for name, vulns in sorted(py.vulnerable.items()):
        ids = ", ".join(
            f"{v.id} ({'/'.join(v.aliases) or '-'}; fixed: {','.join(v.fix_versions) or '?'})" for v in vulns
        )
        print(f"  {name}: {ids}")
    triton = triton_targets(probe_embedded=not args.no_embedded)
    print(f"triton (NVIDIA bulletins recorded up to {ADVISORIES_AS_OF}):")
    for t in triton:
        line = f"  {t.what}: {t.outcome.value}"
        if t.release:
            line += f" [release {t.release}]"
        if t.advisories:
            worst_cvss = max(a.cvss for a in t.advisories)
            fixed = max((a.fixed_in for a in t.advisories), key=_release)
            line += f": {len(t.advisories)} CVEs (max CVSS {worst_cvss}), all fixed by {fixed}"
        if t.note:
            line += f" ({t.note})"
        print(line)
        for a in t.advisories if args.verbose else ():
            print(
                f"    {a.cve} bulletin {a.bulletin} {a.published} CVSS {a.cvss} {a.component},"
                f" fixed {a.fixed_in}"
            )
    overall = worst([py.outcome, *(t.outcome for t in triton)])
    print(f"RESULT: {overall.value}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "when": when,
                    "result": overall.value,
                    "python": {
                        "result": py.outcome.value,
                        "summary": py.summary,
                        "unaudited": py.unaudited,
                        "vulnerable": {
                            n: [dataclasses.asdict(v) for v in vs] for n, vs in py.vulnerable.items()
                        },
                        "runs": [
                            {
                                "service": r.service,
                                "error": r.error,
                                "audited": sorted(r.audited),
                                "skipped": r.skipped,
                            }
                            for r in runs
                        ],
                    },
                    "triton": [
                        {
                            "what": t.what,
                            "release": t.release,
                            "result": t.outcome.value,
                            "note": t.note,
                            "advisories": [dataclasses.asdict(a) for a in t.advisories],
                        }
                        for t in triton
                    ],
                },
                indent=2,
            )
            + "\n"
        )
    return overall.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    lock = sub.add_parser("lock", help="write the serving lock files")
    lock.add_argument("--check", action="store_true", help="compare serving-cpu.txt with this environment")
    lock.add_argument(
        "--no-gpu", action="store_true", help="skip resolving serving-gpu.txt (needs the index)"
    )
    for p in (parser, sub.add_parser("run", help="audit (the default)")):
        p.add_argument("--service", action="append", choices=SERVICES, help="pip-audit service (repeatable)")
        p.add_argument("--no-embedded", action="store_true", help="don't start the bundled tritonserver")
        p.add_argument("--json", help="also write the result as JSON here")
        p.add_argument("-v", "--verbose", action="store_true", help="list every applicable Triton CVE")
    args = parser.parse_args(argv)
    if args.command == "lock":
        return cmd_lock(args)
    return cmd_audit(args)


if __name__ == "__main__":
    sys.exit(main())
