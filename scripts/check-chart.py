#!/usr/bin/env python3
"""Checks charts/mupdate offline: `helm lint --strict` (no warning or error) and a render,
for the default values and for every values file in charts/mupdate/ci/; the rendered
manifests must validate against the Kubernetes schemas (kubernetes-validate --strict).
Resources of CRDs (the ServiceMonitor) have no schema there and are checked for their
kind and metadata only. Needs the PyPI packages helm-python-sdk and kubernetes-validate
(scripts/install-test-deps.sh). Prints one line per check; exits 1 on the first failure.
"""
import pathlib
import subprocess
import sys
import tempfile

import helm_python

CHART = pathlib.Path(__file__).resolve().parent.parent / "charts" / "mupdate"
CRD_GROUPS = ("monitoring.coreos.com/",)


def fail(message):
    print(f"FAIL {message}")
    sys.exit(1)


def values_sets():
    yield "default values", {}
    for path in sorted((CHART / "ci").glob("*.yaml")):
        yield path.name, helm_python.values_from_yaml(path.read_text())


def main():
    chart = helm_python.Chart.load(CHART)
    with tempfile.TemporaryDirectory() as work:
        for label, values in values_sets():
            report = helm_python.lint(CHART, values, strict=True)
            problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
            if problems:
                fail(f"helm lint ({label}): {problems}")
            rendered = chart.render(values, name="mupdate", namespace="mail", is_install=True)
            manifests = []
            for template, text in sorted(rendered.items()):
                if template.endswith("NOTES.txt"):
                    continue
                for number, document in enumerate(text.split("\n---")):
                    if not document.strip() or all(
                        line.strip().startswith("#") or not line.strip()
                        for line in document.splitlines()
                    ):
                        continue
                    if any(f"apiVersion: {group}" in document for group in CRD_GROUPS):
                        if "kind: ServiceMonitor" not in document or "name: " not in document:
                            fail(f"{template} ({label}): malformed custom resource")
                        continue
                    name = template.replace("/", "_") + f".{number}.yaml"
                    path = pathlib.Path(work) / label.replace(" ", "_") / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(document)
                    manifests.append(str(path))
            if not manifests:
                fail(f"nothing rendered ({label})")
            result = subprocess.run(
                ["kubernetes-validate", "--strict", "--quiet", *manifests],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                fail(f"kubernetes-validate ({label}):\n{result.stdout}{result.stderr}")
            print(f"ok {label}: lint clean, {len(manifests)} manifests valid")


if __name__ == "__main__":
    main()
