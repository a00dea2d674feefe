"""`sealift k8s NAME --image REGISTRY/REPO:TAG`: the manifests a cluster needs to serve a model pushed as a modelcar.

    manifests(bento, Plan(image=..., runtime_image=...)) -> [dict, ...]     (KServe, and/or Deployment + Service)

Two ways sites run it:

- KServe: an `InferenceService` whose predictor takes the model from `storageUri: oci://REGISTRY/REPO:TAG` (KServe
  runs the modelcar beside the server and links its /models to /mnt/models) and runs the site's vLLM image
  (`--runtime-image`) with `vllm serve /mnt/models`.
- Plain Kubernetes: a `Deployment` whose init container (the modelcar image itself: it has busybox) copies /models
  into an `emptyDir`, then the vLLM container serves it; or, `--image-volume` (Kubernetes >= 1.33, ImageVolume), the
  modelcar mounted read-only as an image volume, nothing copied. A `Service` in front.

Both: the GPUs (`nvidia.com/gpu` = `--tensor-parallel-size`, passed to vLLM), memory from the weights, /dev/shm
in memory for the tensor-parallel workers, readiness on vLLM's /health (sealift's own server answers the same on
/readyz and /health), the offline environment (sealift.core.offline.OFFLINE_ENV), and the context length the
model's config allows. Nothing here talks to a cluster: the output is for `kubectl apply -f -`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sealift.bundle.source import BentoSource, bundle_requirements
from sealift.core.errors import UserError
from sealift.core.offline import OFFLINE_ENV

__all__ = ["KINDS", "Plan", "default_runtime_image", "manifests"]

KINDS = ("kserve", "deployment")
PORT = 8000
KSERVE_PORT = 8080
MODEL_DIR = "/mnt/models"
GiB = 1024**3


@dataclass(frozen=True)
class Plan:
    """What the cluster runs: the modelcar `image`, the vLLM `runtime_image`, and how."""

    image: str
    runtime_image: str
    kinds: tuple[str, ...] = KINDS
    tensor_parallel_size: int = 1
    namespace: str | None = None
    name: str | None = None
    image_volume: bool = False
    max_model_len: int | None = None
    cpu: str = "4"
    extra_args: tuple[str, ...] = ()


def default_runtime_image(bento: BentoSource) -> str | None:
    """vllm/vllm-openai:v<the vLLM the bento pins>, or None when it pins none (a cpu bento)."""
    for line in bundle_requirements(bento):
        m = re.match(r"vllm\s*==\s*([0-9][0-9A-Za-z.+-]*)", line)
        if m:
            return f"vllm/vllm-openai:v{m.group(1).split('+')[0]}"
    return None


def _dns_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    if not name:
        raise UserError(f"{text!r} makes no Kubernetes name", hint="give one with --name")
    return name


def _quantity(n: int) -> str:
    return f"{max(1, -(-n // GiB))}Gi"


def manifests(bento: BentoSource, plan: Plan, needs: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects for `plan` (KServe first, then Deployment and Service), as dicts ready for YAML."""
    if plan.tensor_parallel_size < 1:
        raise UserError(f"--tensor-parallel-size {plan.tensor_parallel_size}: must be 1 or more")
    unknown = [k for k in plan.kinds if k not in KINDS]
    if unknown or not plan.kinds:
        raise UserError(f"--kind {', '.join(unknown) or '(none)'}: not one of {', '.join(KINDS)}")
    if "://" in plan.image or "@" not in plan.image and ":" not in plan.image.rsplit("/", 1)[-1]:
        raise UserError(f"--image {plan.image!r} is not REGISTRY/REPO:TAG", hint="give what `sealift push` pushed to")
    model = bento.models[0] if bento.models else None
    served = model.name if model else bento.name
    name = _dns_name(plan.name or served)
    weights = int(needs.get("weights_bytes") or 0)
    tp = plan.tensor_parallel_size
    max_len = plan.max_model_len or needs.get("max_model_len")
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "sealift",
              "sealift.io/bento": bento.tag.replace(":", "-")[:63]}
    meta = {"name": name, "labels": labels, **({"namespace": plan.namespace} if plan.namespace else {})}
    env = [{"name": k, "value": v} for k, v in sorted(OFFLINE_ENV.items())]
    memory = _quantity(weights + 4 * GiB)  # vLLM reads the weights through host memory as it loads them
    resources = {"requests": {"cpu": plan.cpu, "memory": memory},
                 "limits": {"memory": memory, **({"nvidia.com/gpu": str(tp)})}}

    def args(path: str, port: int) -> list[str]:
        out = [path, "--served-model-name", served, "--host", "0.0.0.0", "--port", str(port),
               "--tensor-parallel-size", str(tp)]
        if max_len:
            out += ["--max-model-len", str(max_len)]
        return [*out, *plan.extra_args]

    def probe(port: int | str) -> dict[str, Any]:
        return {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 10, "failureThreshold": 3}

    shm = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi" if tp > 1 else "1Gi"}}
    out: list[dict[str, Any]] = []
    if "kserve" in plan.kinds:
        out.append({
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {**meta, "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
            "spec": {"predictor": {
                "minReplicas": 1,
                "model": {
                    "modelFormat": {"name": "vllm"},
                    "storageUri": f"oci://{plan.image}",
                    "image": plan.runtime_image,
                    "command": ["vllm", "serve"],
                    "args": args(MODEL_DIR, KSERVE_PORT),
                    "env": env,
                    "ports": [{"name": "http1", "containerPort": KSERVE_PORT, "protocol": "TCP"}],
                    "readinessProbe": {**probe(KSERVE_PORT), "initialDelaySeconds": 10},
                    "resources": resources,
                    "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                },
                "volumes": [shm],
            }},
        })
    if "deployment" in plan.kinds:
        if plan.image_volume:  # the modelcar itself, read-only: its files are under /models in the image
            volume = {"name": "model", "image": {"reference": plan.image, "pullPolicy": "IfNotPresent"}}
            init: list[dict[str, Any]] = []
            path = "/mnt/modelcar/models"
            mount = {"name": "model", "mountPath": "/mnt/modelcar", "readOnly": True}
        else:
            volume = {"name": "model", "emptyDir": {"sizeLimit": _quantity(weights + weights // 10 + GiB)}}
            init = [{"name": "model", "image": plan.image, "imagePullPolicy": "IfNotPresent",
                     "command": ["/bin/sh", "-c", f"cp -R /models/. {MODEL_DIR}/ && ls -l {MODEL_DIR}"],
                     "volumeMounts": [{"name": "model", "mountPath": MODEL_DIR}],
                     "resources": {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                     "securityContext": {"allowPrivilegeEscalation": False}}]
            path = MODEL_DIR
            mount = {"name": "model", "mountPath": MODEL_DIR, "readOnly": True}
        pod: dict[str, Any] = {
            "containers": [{
                "name": "vllm", "image": plan.runtime_image, "command": ["vllm", "serve"], "args": args(path, PORT),
                "env": env, "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
                "readinessProbe": {**probe("http"), "initialDelaySeconds": 10},
                "startupProbe": {**probe("http"), "failureThreshold": 180},
                "livenessProbe": {**probe("http"), "failureThreshold": 6},
                "resources": resources,
                "volumeMounts": [mount, {"name": "dshm", "mountPath": "/dev/shm"}],
            }],
            "volumes": [volume, shm],
        }
        if init:
            pod["initContainers"] = init
        out.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                             "strategy": {"type": "Recreate"},  # a second copy would need GPUs twice
                             "template": {"metadata": {"labels": labels}, "spec": pod}}})
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": meta,
                    "spec": {"selector": {"app.kubernetes.io/name": name},
                             "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}})
    return out


def for_model(ref: str, *, image: str, runtime_image: str | None, **plan: Any) -> list[dict[str, Any]]:
    """manifests() for a model NAME[:VERSION] (its newest bento) or a bento tag in the local store."""
    import json
    from pathlib import Path

    from sealift.bundle import target
    from sealift.bundle.source import load_bento
    from sealift.core.offline import apply_offline_env
    from sealift.model.store import find_bento

    apply_offline_env()
    bento = load_bento(find_bento(ref))
    runtime = runtime_image or default_runtime_image(bento)
    if not runtime:
        raise UserError(f"{bento.tag} pins no vLLM (a cpu bento?): name the site's vLLM image",
                        hint="--runtime-image REGISTRY/vllm/vllm-openai:vX.Y.Z")
    config: dict[str, Any] = {}
    if bento.models:
        try:
            config = json.loads((Path(bento.models[0].path) / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
    weights = sum(m.manifest.total_bytes for m in bento.models if m.manifest) or None
    needs = target.target_needs(target="gpu", platform="", python_version=bento.python_version, stack=None,
                                weights_bytes=weights, model_config=config)
    return manifests(bento, Plan(image=image, runtime_image=runtime, **plan), needs)
