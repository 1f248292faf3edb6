"""The deployment files: the container image's Dockerfile and entrypoint, deploy/compose.yaml
and the Kubernetes manifests in deploy/kubernetes/.

No container engine or cluster runs here, so these check what can be checked without one:
every Kubernetes document against the API's schemas (kubernetes-validate, offline), and the
invariants a deployment depends on (probes, the Ingress's streaming settings, non-root, one
image, Redis, the shared data folder). The kustomizations are rendered in Python: they hold
only `resources` and `components`, which is all this renderer follows.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mitosis import gateway
from mitosis.v1 import planner_service_pb2, task_service_pb2

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if p.is_dir())
ENTRYPOINT = DEPLOY / "entrypoint.py"
# The oldest Kubernetes the manifests are for (gRPC probes, preStop sleep), and the newest
# whose schemas kubernetes-validate carries.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
IMAGE = "mitosis:latest"
TASK_SERVICE = task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name
PLANNER_SERVICE = planner_service_pb2.DESCRIPTOR.services_by_name["PlannerService"].full_name
# Made by whoever deploys (never committed): overlays/production/kustomization.yaml says how.
CREATED_BY_HAND = {
    "production": {("Secret", "mitosis-redis")},
    "try-it": set(),
}
INGRESS_STREAMING = {
    "nginx.ingress.kubernetes.io/proxy-buffering": "off",
    "nginx.ingress.kubernetes.io/proxy-http-version": "1.1",
    "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
    "nginx.ingress.kubernetes.io/proxy-send-timeout": "3600",
}
HEARTBEAT_INTERVAL_S = 10  # mitosis-executor --heartbeat-interval's default


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The documents a kustomization renders to, for the keys used here."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - {"apiVersion", "kind", "resources", "components"}
    assert not unknown, f"{folder}: {unknown} is not rendered by tests/test_deploy.py"
    documents: list[dict[str, Any]] = []
    for entry in [*spec.get("resources", []), *spec.get("components", [])]:
        path = folder / entry
        if path.is_dir():
            documents += kustomize(path)
        else:
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return documents


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name: str = request.param
    return name, kustomize(KUBERNETES / "overlays" / name)


def find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads(documents: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (d for d in documents if d["kind"] == "Deployment")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (only,) = containers
    return only


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_repository_ships_the_overlays_this_test_checks() -> None:
    assert sorted(CREATED_BY_HAND) == OVERLAYS


def test_every_kubernetes_document_is_valid_for_the_api(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, documents = overlay
    names = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert len(names) == len(set(names)), "a resource is defined twice"
    for document in documents:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)


def test_everything_a_pod_refers_to_exists_or_is_made_by_hand(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, documents = overlay
    present = {(d["kind"], d["metadata"]["name"]) for d in documents}
    needed: set[tuple[str, str]] = set()
    for deployment in workloads(documents):
        pod = deployment["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                needed.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
            if "secret" in volume and not volume["secret"].get("optional"):
                needed.add(("Secret", volume["secret"]["secretName"]))
        for c in pod["containers"]:
            for source in c.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source and not source[key].get("optional"):
                        needed.add((kind, source[key]["name"]))
            for value in env_of(c).values():
                if isinstance(value, dict):
                    for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                        if key in value:
                            needed.add((kind, value[key]["name"]))
    assert needed - present == CREATED_BY_HAND[name]
    for document in documents:
        if document["kind"] == "Service":
            selected = [
                d
                for d in workloads(documents)
                if matches(
                    document["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"]
                )
            ]
            assert len(selected) == 1, f"Service {document['metadata']['name']} selects no pods"


def test_planner_and_executor_probes_are_grpc_health_on_their_listening_port(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, documents = overlay
    for name, listen, service in (
        ("mitosis-planner", "MITOSIS_PLANNER_LISTEN", PLANNER_SERVICE),
        ("mitosis-executor", "MITOSIS_EXECUTOR_LISTEN", TASK_SERVICE),
    ):
        c = container(find(documents, "Deployment", name))
        port = int(env_of(c)[listen].rsplit(":", 1)[1])
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"] == port
        for probe in ("startupProbe", "livenessProbe"):
            # The server's own status: SERVING while the process lives, whatever Redis does.
            assert c[probe]["grpc"] == {"port": port}, (name, probe)
        # The service's status: NOT_SERVING while a dependency is down, or on SIGTERM.
        assert c["readinessProbe"]["grpc"] == {"port": port, "service": service}


def test_the_ingress_keeps_grpc_web_streams_live_and_reaches_the_gateway(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, documents = overlay
    ingresses = [d for d in documents if d["kind"] == "Ingress"]
    for ingress in ingresses:
        annotations = ingress["metadata"]["annotations"]
        assert {k: annotations.get(k) for k in INGRESS_STREAMING} == INGRESS_STREAMING
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > (
            HEARTBEAT_INTERVAL_S
        )
        assert ingress["spec"]["ingressClassName"] == "nginx"
        public_host = find(documents, "ConfigMap", "mitosis-gateway")["data"]["public-host"]
        (rule,) = ingress["spec"]["rules"]
        assert rule["host"] == public_host, "Envoy answers 421 to a host it was not given"
        (path,) = rule["http"]["paths"]
        backend = path["backend"]["service"]
        service = find(documents, "Service", backend["name"])
        assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_every_pod_runs_as_non_root_on_a_read_only_root(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, documents = overlay
    for deployment in workloads(documents):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            assert c["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }
            assert "memory" in c["resources"]["limits"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"])


def test_the_three_roles_run_one_image_and_each_its_own_role(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, documents = overlay
    roles = {}
    for deployment in workloads(documents):
        c = container(deployment)
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == "redis":
            continue
        assert c["image"] == IMAGE
        roles[component] = c["args"][0]
    assert roles == {"planner": "planner", "executor": "executor", "gateway": "gateway"}


def test_executors_share_redis_the_planner_and_a_data_folder(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, documents = overlay
    executor = find(documents, "Deployment", "mitosis-executor")
    assert executor["spec"]["replicas"] >= 2
    env = env_of(container(executor))
    assert env["MITOSIS_STORE"] == {"secretKeyRef": {"name": "mitosis-redis", "key": "url"}}
    planner_host, planner_port = env["MITOSIS_PLANNER"].split(":")
    planner = find(documents, "Service", planner_host)
    assert int(planner_port) in [p["port"] for p in planner["spec"]["ports"]]
    (data,) = [m for m in container(executor)["volumeMounts"] if m["name"] == "data"]
    assert data["mountPath"] == env["MITOSIS_DATA_DIR"]
    (volume,) = [v for v in executor["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"]
    claim = find(documents, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    # Several nodes need ReadWriteMany; on one node ReadWriteOnce is shared by its pods.
    expected = {"production": ["ReadWriteMany"], "try-it": ["ReadWriteOnce"]}[name]
    assert claim["spec"]["accessModes"] == expected
    settings = find(documents, "ConfigMap", "mitosis-executor")["data"]
    if name == "production":
        # Keys from the Secret mitosis-api-keys (made by hand), mounted where the setting says.
        keys = Path(settings["MITOSIS_API_KEYS"])
        (mount,) = [m for m in container(executor)["volumeMounts"] if m["name"] == "api-keys"]
        assert keys.parent == Path(mount["mountPath"])
        (secret,) = [
            v["secret"]
            for v in executor["spec"]["template"]["spec"]["volumes"]
            if v["name"] == "api-keys"
        ]
        assert secret["secretName"] == "mitosis-api-keys"
        assert "MITOSIS_ALLOW_NO_KEYS" not in settings
    if name == "try-it":
        assert settings == {"MITOSIS_ALLOW_NO_KEYS": "1"}
        url = find(documents, "Secret", "mitosis-redis")["stringData"]["url"]
        host, port = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", url).groups()  # type: ignore[union-attr]
        redis = find(documents, "Service", host)
        assert int(port) in [p["port"] for p in redis["spec"]["ports"]]


def test_each_disruption_budget_selects_exactly_its_own_pods(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, documents = overlay
    budgets = {d["metadata"]["name"]: d for d in documents if d["kind"] == "PodDisruptionBudget"}
    assert "mitosis-executor" in budgets
    for name, budget in budgets.items():
        selected = [
            d["metadata"]["name"]
            for d in workloads(documents)
            if matches(
                budget["spec"]["selector"]["matchLabels"],
                d["spec"]["template"]["metadata"]["labels"],
            )
        ]
        assert selected == [name]
        assert (
            budget["spec"]["maxUnavailable"]
            < find(documents, "Deployment", name)["spec"]["replicas"]
        )


def test_sigterm_grace_covers_the_services_own_grace(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, documents = overlay
    for name in ("mitosis-planner", "mitosis-executor"):
        deployment = find(documents, "Deployment", name)
        grace = float(flag(container(deployment)["args"], "grace"))
        # --grace for calls in flight, then stopping the tasks and closing the store.
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= (
            grace + 5
        )


def test_the_gateway_args_render_an_envoy_config_over_every_executor_pod(
    overlay: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    _, documents = overlay
    c = container(find(documents, "Deployment", "mitosis-gateway"))
    host = find(documents, "ConfigMap", "mitosis-gateway")["data"]["public-host"]
    args = [a.replace("$(MITOSIS_PUBLIC_HOST)", host) for a in c["args"][1:]]
    listen = env_of(c)["MITOSIS_GATEWAY_LISTEN"]
    out = tmp_path / "envoy.yaml"
    assert gateway.main([*args, f"--listen={listen}", f"--out={out}"]) == 0
    config = yaml.safe_load(out.read_text())
    (cluster,) = config["static_resources"]["clusters"]
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    executors = find(documents, "Service", address["address"])
    assert executors["spec"]["clusterIP"] == "None", "Envoy needs one address per pod"
    assert executors["spec"]["publishNotReadyAddresses"] is True
    assert address["port_value"] == executors["spec"]["ports"][0]["port"]
    assert cluster["type"] == "STRICT_DNS"
    (listener,) = config["static_resources"]["listeners"]
    assert (
        listener["address"]["socket_address"]["port_value"]
        == (
            container(find(documents, "Deployment", "mitosis-gateway"))["ports"][0]["containerPort"]
        )
    )
    virtual_host = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    assert host in virtual_host["virtual_hosts"][0]["domains"]
    result = gateway.validate(out)
    assert result.returncode == 0, result.stderr


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_compose_runs_redis_a_planner_executors_and_the_gateway_from_the_root_dockerfile() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "planner", "executor", "gateway"}
    for name in ("planner", "executor", "gateway"):
        service = services[name]
        assert (DEPLOY / service["build"]["context"]).resolve() == ROOT
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert service["image"] == IMAGE
        assert service["command"][0] == name
        assert service["read_only"] is True
    executor = services["executor"]
    assert executor["deploy"]["replicas"] >= 2
    assert executor["environment"]["MITOSIS_STORE"].startswith("redis://redis:")
    assert executor["environment"]["MITOSIS_PLANNER"] == "planner:50052"
    assert executor["volumes"] == ["data:/data"]
    assert "data" in compose()["volumes"]
    assert flag(services["gateway"]["command"], "executor") == "executor:50051"
    assert services["gateway"]["ports"] == ["127.0.0.1:8080:8080"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_runs_as_a_non_root_user_with_the_entrypoint_and_the_pinned_uv() -> None:
    instructions = dockerfile_instructions()
    user = [value for op, value in instructions if op == "USER"][-1]
    assert user.split(":")[0] == "10001"
    assert ("ENTRYPOINT", '["python", "/app/entrypoint.py"]') in instructions
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert makefile_uv is not None
    assert ("ARG", f"UV_VERSION={makefile_uv.group(1)}") in instructions
    exposed = {p for op, value in instructions if op == "EXPOSE" for p in value.split()}
    assert {"8080", "50051", "50052", "9464", "9463"} <= exposed
    # The paths the container's own settings point at are the ones the image fills.
    env = " ".join(value for op, value in instructions if op == "ENV")
    target = re.search(r"MITOSIS_GATEWAY_STATIC_DIR=(\S+)", env)
    assert target is not None
    copies = [v for op, v in instructions if op == "COPY" and v.endswith(target.group(1))]
    assert copies, "nothing is copied where MITOSIS_GATEWAY_STATIC_DIR points"
    # The wheel built in the image carries Envoy's template: it must be there to build.
    assert ("COPY", "envoy/envoy.yaml envoy/envoy.yaml") in instructions


def test_every_file_the_dockerfile_copies_is_let_through_by_dockerignore() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for op, value in dockerfile_instructions():
        if op != "COPY" or value.startswith("--from"):
            continue
        *sources, _ = shlex.split(value)
        for source in sources:
            source = source.rstrip("/")
            assert (ROOT / source).exists(), source
            assert any(source == a or source.startswith(a + "/") for a in allowed), source


async def entrypoint(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ENTRYPOINT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_the_health_role_passes_for_a_serving_service_and_fails_for_none(
    planner_target: str, unused_tcp_port: int
) -> None:
    assert await entrypoint("health", planner_target, PLANNER_SERVICE) == (
        0,
        f"health {planner_target} {PLANNER_SERVICE}: SERVING\n",
    )
    code, out = await entrypoint("health", f"127.0.0.1:{unused_tcp_port}")
    assert (code, out) == (1, f"health 127.0.0.1:{unused_tcp_port}: UNAVAILABLE\n")


async def test_the_gateway_role_renders_the_template_then_becomes_envoy(tmp_path: Path) -> None:
    fake_envoy = tmp_path / "envoy"
    fake_envoy.write_text('#!/bin/sh\necho "$0 $*"\ngrep -c lb_endpoints "$2"\n')
    fake_envoy.chmod(0o755)
    config = tmp_path / "rendered.yaml"
    code, out = await entrypoint(
        "gateway",
        "--executor=executors.example:50051",
        env={"MITOSIS_ENVOY": str(fake_envoy), "MITOSIS_GATEWAY_CONFIG": str(config)},
    )
    assert (code, out) == (
        0,
        f"{fake_envoy} -c {config} --disable-hot-restart --log-level warn\n1\n",
    )
    assert '"executors.example"' in config.read_text()
