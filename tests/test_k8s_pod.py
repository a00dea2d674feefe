"""README's "Running in Kubernetes" pod spec: valid Kubernetes (the PodSpec of tests/data/k8s-schema.json, v1.33),
and consistent with what sealift reads (its command, environment, probes' paths, the store on the volume)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "tests" / "data" / "k8s-schema.json").read_text())


def readme_pod() -> dict:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Running in Kubernetes"):]
    section = section[: section.index("\n## ", 5)]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    return yaml.safe_load(block)


def validate_spec(spec: dict) -> None:
    import jsonschema

    one = {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": "#/$defs/io.k8s.api.core.v1.PodSpec"}
    jsonschema.Draft7Validator(one).validate(spec)


def test_the_readme_pod_spec_is_valid_kubernetes() -> None:
    pod = readme_pod()
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    validate_spec(pod["spec"])
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):  # the check can fail: the schema refuses unknown fields
        validate_spec({**pod["spec"], "containerz": []})


def test_the_readme_pod_spec_says_what_sealift_reads() -> None:
    from sealift.host.start import OPTION_ENV

    spec = readme_pod()["spec"]
    (server,) = spec["containers"]
    res = server["resources"]
    assert res["requests"] == res["limits"] and {"cpu", "memory"} <= set(res["limits"])  # Guaranteed QoS
    cmd = server["command"]
    assert cmd[:2] == ["sealift", "start"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = int(cmd[cmd.index("--port") + 1])
    assert server["ports"][0]["containerPort"] == port
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/livez"
    env = {e["name"]: e for e in server["env"]}
    sealift_vars = set(OPTION_ENV.values()) | {"BENTOML_HOME", "SEALIFT_HOME"}
    assert set(env) <= sealift_vars, set(env) - sealift_vars
    (mount,) = server["volumeMounts"]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"]
    for home in ("BENTOML_HOME", "SEALIFT_HOME"):  # the model store lives on the volume
        assert env[home]["value"].startswith(mount["mountPath"] + "/")


def test_the_probe_paths_are_served() -> None:
    """/readyz and /livez are routes of sealift's own app (under BentoML too: its /readyz asks the service)."""
    from starlette.routing import Route

    from sealift.serving.app import create_app
    from sealift.serving.config import ServeConfig

    class Idle:
        name, ready, load_error, context_length = "x", False, None, 0

    app = create_app(ServeConfig(model_tag="x", served_model_name="x"), Idle())  # type: ignore[arg-type]
    paths = {r.path for r in app.routes if isinstance(r, Route)}
    assert {"/readyz", "/livez"} <= paths
