"""The fault suite's assertions (`python -m loadtests.faults`, quick profile): each scenario runs under
mixed load against `bentoml serve` of the synthetic model on loopback and must meet issue 14's targets
(docs/reliability.md lists them), except the latency and throughput figures (``Target.speed``), which
the full command measures and reports: on shared cores a test cannot assert them without flaking. A
scenario that could not run at all fails with its reason."""

from __future__ import annotations

import pytest

from loadtests.faults.render import details
from loadtests.faults.scenarios import SCENARIOS, run
from loadtests.faults.suite import QUICK, Suite

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def suite(model_tag: str, tmp_path_factory: pytest.TempPathFactory) -> Suite:
    return Suite(model_tag, tmp_path_factory.mktemp("faults"), QUICK)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_meets_the_targets(suite: Suite, name: str) -> None:
    rows = run(suite, name)
    report = "\n".join(line for r in rows for line in details(r))
    assert rows and all(r.requests > 0 for r in rows), report  # it measured something
    assert all(r.targets for r in rows), report
    assert not [(r.scenario, t.name) for r in rows for t in r.missed if not t.speed], report
