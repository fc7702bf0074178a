"""scripts/audit.py: the pip-audit parser's three-way result, the Triton advisory table, and the lock
files the Bento image installs (runners/platform/bento_image.py).

pip-audit itself is not needed: its output is fed in, recorded on a machine without a reachable advisory
source (audit_fixtures/README.md) or written in its documented ``--format json`` shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.platform.bento_image import (
    LockError,
    bento_image,
    declared_dependencies,
    lock_path,
    lock_problems,
    read_lock,
)
from scripts.audit import (
    ADVISORIES,
    Outcome,
    ServiceRun,
    Vuln,
    advisories_for,
    check_triton_release,
    combine,
    lock_text,
    ngc_tags,
    parse_pip_audit,
    worst,
)
from tests.paths import ROOT

FIXTURES = Path(__file__).with_name("audit_fixtures")
CPU_LOCK = read_lock(lock_path(ROOT, "cpu"))


def recorded_pypi_run() -> ServiceRun:
    return parse_pip_audit(
        "pypi",
        (FIXTURES / "pypi-skipped-all.stdout.json").read_text(),
        (FIXTURES / "pypi-skipped-all.stderr.txt").read_text(),
        0,
        CPU_LOCK,
    )


def report(*deps: dict[str, object]) -> str:
    return json.dumps({"dependencies": list(deps), "fixes": []})


# ----------------------------------------------------------------------------- the three-way result
def test_skipped_everything_is_no_result_not_a_pass() -> None:
    """Recorded: pip-audit said "No known vulnerabilities found", exit 0, and audited nothing."""
    assert "No known vulnerabilities found" in (FIXTURES / "pypi-skipped-all.stderr.txt").read_text()
    run = recorded_pypi_run()
    assert run.error is None and run.audited == {}
    assert set(run.skipped) == set(CPU_LOCK)
    result = combine(CPU_LOCK, [run])
    assert result.outcome is Outcome.NO_RESULT
    assert result.summary.startswith("no advisory source answered: 0 of")
    assert result.unaudited == sorted(CPU_LOCK)
    assert result.outcome.exit_code == 3


def test_unreachable_service_is_no_result() -> None:
    """Recorded: OSV's host does not resolve; pip-audit dies with a traceback and prints no JSON."""
    run = parse_pip_audit("osv", "", (FIXTURES / "osv-unreachable.stderr.txt").read_text(), 1, CPU_LOCK)
    assert run.error is not None and "api.osv.dev" in run.error
    assert run.audited == {}
    assert combine(CPU_LOCK, [recorded_pypi_run(), run]).outcome is Outcome.NO_RESULT


def test_vulnerabilities_found() -> None:
    pins = {"requests": "2.19.0", "numpy": "1.26.4"}
    vuln = {"id": "PYSEC-2018-28", "fix_versions": ["2.20.0"], "aliases": ["CVE-2018-18074"]}
    out = report(
        {"name": "requests", "version": "2.19.0", "vulns": [vuln]},
        {"name": "numpy", "version": "1.26.4", "vulns": []},
    )
    result = combine(pins, [parse_pip_audit("osv", out, "", 1, pins)])
    assert result.outcome is Outcome.VULNERABLE and result.outcome.exit_code == 1
    assert result.vulnerable == {"requests": [Vuln("PYSEC-2018-28", ["CVE-2018-18074"], ["2.20.0"])]}


def test_vulnerable_beats_partial_coverage() -> None:
    pins = {"requests": "2.19.0", "numpy": "1.26.4"}
    vuln = {"id": "PYSEC-2018-28", "fix_versions": ["2.20.0"], "aliases": []}
    out = report(
        {"name": "requests", "version": "2.19.0", "vulns": [vuln]},
        {
            "name": "numpy",
            "skip_reason": "Dependency not found on PyPI and could not be audited: numpy (1.26.4)",
        },
    )
    result = combine(pins, [parse_pip_audit("pypi", out, "", 1, pins)])
    assert result.outcome is Outcome.VULNERABLE
    assert result.unaudited == ["numpy"] and "1 more could not be audited" in result.summary


def test_none_found_needs_every_package_audited() -> None:
    pins = {"Requests": "2.34.2", "numpy": "1.26.4"}
    clean = report(
        {"name": "requests", "version": "2.34.2", "vulns": []},
        {"name": "numpy", "version": "1.26.4", "vulns": []},
    )
    pins = {k.lower(): v for k, v in pins.items()}
    assert combine(pins, [parse_pip_audit("osv", clean, "", 0, pins)]).outcome is Outcome.CLEAN
    partial = report({"name": "requests", "version": "2.34.2", "vulns": []})  # numpy missing entirely
    run = parse_pip_audit("osv", partial, "", 0, pins)
    assert run.skipped == {"numpy": "not in pip-audit's output"}
    result = combine(pins, [run])
    assert result.outcome is Outcome.NO_RESULT and result.unaudited == ["numpy"]


def test_a_second_service_can_fill_the_gaps() -> None:
    pins = {"requests": "2.34.2", "numpy": "1.26.4"}
    first = report(
        {"name": "requests", "version": "2.34.2", "vulns": []},
        {
            "name": "numpy",
            "skip_reason": "Dependency not found on PyPI and could not be audited: numpy (1.26.4)",
        },
    )
    second = report(
        {"name": "numpy", "version": "1.26.4", "vulns": []}, {"name": "requests", "skip_reason": "x"}
    )
    runs = [parse_pip_audit("pypi", first, "", 0, pins), parse_pip_audit("osv", second, "", 0, pins)]
    assert combine(pins, runs).outcome is Outcome.CLEAN


def test_nothing_to_audit_is_no_result() -> None:
    assert combine({}, []).outcome is Outcome.NO_RESULT
    assert worst([]) is Outcome.NO_RESULT
    assert worst([Outcome.CLEAN, Outcome.NO_RESULT]) is Outcome.NO_RESULT
    assert worst([Outcome.NO_RESULT, Outcome.VULNERABLE, Outcome.CLEAN]) is Outcome.VULNERABLE


# ----------------------------------------------------------------------------------------- Triton
def test_triton_advisories_by_release() -> None:
    in_2410 = {a.cve for a in advisories_for("24.10")}
    # the August 2025 Python-backend chain and the other ids the security issue named
    for cve in ("CVE-2025-23310", "CVE-2025-23311", "CVE-2025-23317", "CVE-2025-23318", "CVE-2025-23319"):
        assert cve in in_2410
    for cve in ("CVE-2025-23320", "CVE-2025-23333", "CVE-2025-23334", "CVE-2025-23335", "CVE-2025-23316"):
        assert cve in in_2410
    assert "CVE-2024-53880" not in in_2410  # affected 24.11 only
    assert "CVE-2024-53880" in {a.cve for a in advisories_for("24.11")}
    assert "CVE-2025-23268" not in in_2410  # DALI backend: not used by Folio
    assert {a.cve for a in advisories_for("26.06")} == {"CVE-2026-16497"}
    assert advisories_for("26.07") == [] and advisories_for("26.11") == []
    assert len({a.cve for a in ADVISORIES}) == len(ADVISORIES)


def test_triton_release_check() -> None:
    assert check_triton_release("x", "24.10").outcome is Outcome.VULNERABLE
    assert check_triton_release("x", "26.11").outcome is Outcome.CLEAN
    assert check_triton_release("x", None, "version unknown").outcome is Outcome.NO_RESULT


def test_deploy_pins_one_triton_release_without_recorded_advisories() -> None:
    tags = ngc_tags()
    assert len(tags) == 1, tags  # compose and k8s run the same release
    (release,) = tags
    assert advisories_for(release) == []
    assert len(tags[release]) == 2


# ------------------------------------------------------------------------------------------- locks
@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_lock_covers_pyproject(flavour: str) -> None:
    pins = read_lock(lock_path(ROOT, flavour))
    assert lock_problems(pins, declared_dependencies(ROOT / "pyproject.toml", flavour)) == []
    text = lock_path(ROOT, flavour).read_text()
    assert text == lock_text(flavour, pins), "regenerate with: python scripts/audit.py lock"


def test_lock_flavours() -> None:
    cpu, gpu = read_lock(lock_path(ROOT, "cpu")), read_lock(lock_path(ROOT, "gpu"))
    assert {"faiss-cpu", "onnxruntime"} <= set(cpu) and not {"faiss-cpu", "onnxruntime"} & set(gpu)
    assert {"faiss-gpu-cu12", "onnxruntime-gpu", "nvidia-pytriton", "bentoml"} <= set(gpu)
    shared = set(cpu) & set(gpu)
    assert {n: cpu[n] for n in shared} == {n: gpu[n] for n in shared}  # gpu resolved under cpu pins


def test_lock_problems_catch_a_stale_lock() -> None:
    pins = {"numpy": "1.26.4", "redis": "8.1.0"}
    assert lock_problems(pins, ["numpy>=1.26,<2", "redis>=5"]) == []
    assert lock_problems(pins, ["numpy>=2"]) == ["numpy>=2: pinned at 1.26.4, outside the declared range"]
    assert lock_problems(pins, ["scipy>=1.11"]) == ["scipy>=1.11: not pinned"]


def test_read_lock_rejects_ranges_and_duplicates(tmp_path: Path) -> None:
    bad = tmp_path / "l.txt"
    bad.write_text("numpy>=1.26\n")
    with pytest.raises(LockError, match="exact pin"):
        read_lock(bad)
    bad.write_text("numpy==1.26.4\nNumPy==1.26.4\n")
    with pytest.raises(LockError, match="twice"):
        read_lock(bad)


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_image_installs_exactly_the_lock(flavour: str) -> None:
    image = bento_image(ROOT / "pyproject.toml", flavour)
    lines = [line for line in image.python_requirements.splitlines() if line]
    pins = read_lock(lock_path(ROOT, flavour))
    assert lines == [f"{n}=={v}" for n, v in sorted(pins.items())]
    assert image.lock_python_packages is False  # no re-resolution at build time
    assert ("nvidia/cuda" in image.base_image) == (flavour == "gpu")


def _project(tmp_path: Path, extra_dep: str | None = None) -> Path:
    text = (ROOT / "pyproject.toml").read_text()
    if extra_dep:
        text = text.replace("dependencies = [\n", f'dependencies = [\n    "{extra_dep}",\n', 1)
    (tmp_path / "pyproject.toml").write_text(text)
    return tmp_path / "pyproject.toml"


def test_image_refuses_a_stale_or_missing_lock(tmp_path: Path) -> None:
    pyproject = _project(tmp_path, extra_dep="scipy>=1.11")
    with pytest.raises(LockError, match="is missing"):
        bento_image(pyproject, "cpu")
    lock = lock_path(tmp_path, "cpu")
    lock.parent.mkdir(parents=True)
    lock.write_text(lock_path(ROOT, "cpu").read_text())
    with pytest.raises(LockError, match=r"scipy>=1\.11: not pinned"):
        bento_image(pyproject, "cpu")


def test_image_inside_a_built_bento_needs_no_lock(tmp_path: Path) -> None:
    """Serving from a built Bento imports service.py again; its image is frozen already (no lock there)."""
    (tmp_path / "bento.yaml").write_text("service: service:Recommender\n")
    src = tmp_path / "src"
    src.mkdir()
    image = bento_image(_project(src), "cpu")
    assert "bentoml==1.4.40" in image.python_requirements


def test_unknown_flavour() -> None:
    with pytest.raises(ValueError, match="cpu or gpu"):
        bento_image(ROOT / "pyproject.toml", "tpu")
