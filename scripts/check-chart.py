#!/usr/bin/env python3
"""Checks charts/mupdate offline: `helm lint --strict` (no warning or error) and a render,
for the default values and for every values file in charts/mupdate/ci/; the rendered
manifests must validate against the Kubernetes schemas (kubernetes-validate --strict).
Resources of CRDs have no schema there: the ServiceMonitor is checked for its endpoint,
the PrometheusRule's groups with `promtool check rules` (Debian package prometheus). Needs the PyPI packages helm-python-sdk and kubernetes-validate
(scripts/install-test-deps.sh). Prints one line per check; exits 1 on the first failure.

`check-chart.py render VALUES_JSON` instead prints, as one JSON array, the manifests the
chart renders for release `mupdate` in namespace `mail` with those values (tests run the
rendered StatefulSet as local processes).
"""
import json
import pathlib
import subprocess
import sys
import tempfile

import helm_python
import yaml

CHART = pathlib.Path(__file__).resolve().parent.parent / "charts" / "mupdate"
CRD_GROUPS = ("monitoring.coreos.com/",)



def validate(label, manifests):
    """Fails unless kubernetes-validate accepts every manifest, strictly."""
    result = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", *manifests],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        fail(f"kubernetes-validate ({label}):\n{result.stdout}{result.stderr}")

def fail(message):
    print(f"FAIL {message}")
    sys.exit(1)


def values_sets():
    yield "default values", {}
    for path in sorted((CHART / "ci").glob("*.yaml")):
        yield path.name, helm_python.values_from_yaml(path.read_text())


def check_custom_resource(where, document, work):
    """Prometheus Operator resources have no schema in kubernetes-validate: a ServiceMonitor
    must scrape the sidecar; a PrometheusRule's groups must pass `promtool check rules`."""
    resource = yaml.safe_load(document)
    if not resource.get("metadata", {}).get("name"):
        fail(f"{where}: a custom resource without a name")
    kind = resource.get("kind")
    spec = resource.get("spec") or {}
    if kind == "ServiceMonitor":
        if not any(e.get("path") == "/metrics" for e in spec.get("endpoints", [])):
            fail(f"{where}: the ServiceMonitor scrapes no /metrics endpoint")
    elif kind == "PrometheusRule":
        rules = pathlib.Path(work) / "prometheusrule-groups.yaml"
        rules.write_text(yaml.safe_dump({"groups": spec.get("groups", [])}))
        result = subprocess.run(
            ["promtool", "check", "rules", str(rules)], capture_output=True, text=True
        )
        if result.returncode != 0 or "SUCCESS" not in result.stdout:
            fail(f"{where}: promtool check rules:\n{result.stdout}{result.stderr}")
    else:
        fail(f"{where}: unexpected custom resource {kind}")


def documents(chart, values):
    """The rendered (template, manifest text) pairs, without NOTES.txt and empty ones."""
    rendered = chart.render(values, name="mupdate", namespace="mail", is_install=True)
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for document in text.split("\n---"):
            if document.strip() and not all(
                line.strip().startswith("#") or not line.strip()
                for line in document.splitlines()
            ):
                yield template, document


def render(values_json):
    chart = helm_python.Chart.load(CHART)
    manifests = [yaml.safe_load(document) for _, document in documents(chart, json.loads(values_json))]
    json.dump(manifests, sys.stdout)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "render":
        render(sys.argv[2])
        return
    chart = helm_python.Chart.load(CHART)
    with tempfile.TemporaryDirectory() as work:
        for label, values in values_sets():
            report = helm_python.lint(CHART, values, strict=True)
            problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
            if problems:
                fail(f"helm lint ({label}): {problems}")
            manifests = []
            custom = 0
            for number, (template, document) in enumerate(documents(chart, values)):
                if any(f"apiVersion: {group}" in document for group in CRD_GROUPS):
                    check_custom_resource(f"{template} ({label})", document, work)
                    custom += 1
                    continue
                name = template.replace("/", "_") + f".{number}.yaml"
                path = pathlib.Path(work) / label.replace(" ", "_") / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(document)
                manifests.append(str(path))
            if not manifests:
                fail(f"nothing rendered ({label})")
            validate(label, manifests)
            print(
                f"ok {label}: lint clean, {len(manifests)} manifests valid, "
                f"{custom} custom resources checked"
            )
    examples = sorted(str(p) for p in (pathlib.Path(CHART) / "examples").glob("*.yaml"))
    if examples:
        validate("examples", examples)
        print(f"ok examples: {len(examples)} manifests valid")


if __name__ == "__main__":
    main()
