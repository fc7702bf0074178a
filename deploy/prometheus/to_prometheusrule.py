"""Write deploy/k8s/monitoring/folio-prometheusrule.yaml: the groups of folio-rules.yml as a
prometheus-operator ``PrometheusRule``, so the plain-Prometheus file stays the one source.

    python deploy/prometheus/to_prometheusrule.py           # rewrite the manifest
    python deploy/prometheus/to_prometheusrule.py --check   # exit 1 when the committed one differs

tests/unit/deploy/test_alerting.py runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "folio-rules.yml"
MANIFEST = HERE.parent / "k8s" / "monitoring" / "folio-prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/folio-rules.yml by deploy/prometheus/to_prometheusrule.py: edit the
# rules file, then run the script (tests/unit/deploy/test_alerting.py fails when this copy differs).
# Needs prometheus-operator's PrometheusRule CRD, so it is not in deploy/k8s/kustomization.yaml:
#   kubectl apply -k deploy/k8s/monitoring
# Add the labels your Prometheus's ruleSelector asks for (kube-prometheus-stack: release=<its release>).
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as literal blocks, as in the rules file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "folio",
            "namespace": "folio",
            "labels": {
                "app.kubernetes.io/name": "folio",
                "app.kubernetes.io/component": "monitoring",
                "app.kubernetes.io/part-of": "folio",
            },
        },
        "spec": {"groups": groups},
    }


def render(rules_text: str) -> str:
    groups = yaml.safe_load(rules_text)["groups"]
    body = yaml.dump(prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=200)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed manifest differs")
    args = parser.parse_args(argv)
    text = render(RULES.read_text())
    if args.check:
        if not MANIFEST.exists() or MANIFEST.read_text() != text:
            print(
                f"{MANIFEST} is stale: run python {Path(__file__).relative_to(Path.cwd())}", file=sys.stderr
            )
            return 1
        return 0
    MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    MANIFEST.write_text(text)
    print(f"wrote {MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
