#!/usr/bin/env python3
"""Validates the Kubernetes manifests of a directory (default deploy/k8s) against their schemas.

Built-in kinds (Deployment, Service, PodDisruptionBudget, NetworkPolicy, ...) against the
Kubernetes JSON schemas that the PyPI package kubernetes-validate ships (offline), strictly:
an unknown field fails. The CRDs (KEDA, Prometheus Operator), the Kustomization and the Grafana
dashboard against the hand-kept schemas in DIR/schemas/. A manifest whose kind has no schema
fails. Prints one line per file; exits 1 when any file fails or none was found.
scripts/services.sh installs kubernetes-validate into .venv; tests/it/deploy.rs runs this.
"""

import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.30.0"

# apiVersion/kind -> hand-kept schema file in DIR/schemas/.
CUSTOM = {
    "keda.sh/v1alpha1/ScaledObject": "scaledobject.json",
    "keda.sh/v1alpha1/TriggerAuthentication": "triggerauthentication.json",
    "monitoring.coreos.com/v1/ServiceMonitor": "servicemonitor.json",
    "monitoring.coreos.com/v1/PrometheusRule": "prometheusrule.json",
    "kustomize.config.k8s.io/v1beta1/Kustomization": "kustomization.json",
}
DASHBOARD_SCHEMA = "grafana-dashboard.json"


def schema_errors(schema_path, document):
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def validate(path, schemas):
    if path.suffix == ".json":
        document = json.loads(path.read_text())
        return schema_errors(schemas / DASHBOARD_SCHEMA, document), "dashboard"
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if len(documents) != 1:
        return [f"{len(documents)} documents, expected 1"], "?"
    document = documents[0]
    key = f"{document.get('apiVersion')}/{document.get('kind')}"
    if key in CUSTOM:
        return schema_errors(schemas / CUSTOM[key], document), key
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key} in Kubernetes {KUBERNETES_VERSION}"], key
    except kubernetes_validate.ValidationError as error:
        where = "/".join(str(p) for p in error.path) or "(root)"
        return [f"{where}: {error.message}"], key
    return [], key


def main():
    directory = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/k8s")
    schemas = directory / "schemas"
    files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.json"))
    failed = 0
    for path in files:
        errors, what = validate(path, schemas)
        if errors:
            failed += 1
            for error in errors:
                print(f"FAIL {path.name} ({what}): {error}")
        else:
            print(f"ok   {path.name} ({what})")
    print(f"{len(files) - failed} passed, {failed} failed")
    return 1 if failed or not files else 0


if __name__ == "__main__":
    sys.exit(main())
