"""Offline checks of the Kubernetes manifests in deploy/k8s against the schema and the package.

Every overlay is rendered with `kubectl kustomize` (skipped where kubectl is
absent) and every object is validated against the Kubernetes OpenAPI schema
with the `kubernetes-validate` package, strictly (an unknown field fails).
Then what the schema cannot know: each app container's command and
environment are parsed by its console script's own argparse parser (as
tests/unit/test_compose.py does for compose), the servers' probes are native
gRPC probes on their data port asking for a health service name the server
reports, each index slot has a headless Service, every Deployment and
StatefulSet has a PodDisruptionBudget (and, serving metrics, the annotations
Prometheus finds it by), the servers log JSON lines, and the query service's
index endpoint list names every pod of every index slot, and the NetworkPolicies let only the admin
tools reach the admin ports and only the query service reach Redis. Where slots are sharded, every slot
serves shards 0..N-1 of the trainer's --index-shards N under one slot name,
each (slot, shard) with its own Service and budget and two replicas.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.unit.test_deploy_logs import NATIVE_LOG_ENV

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"
# The oldest Kubernetes the manifests promise to run on (docs/DEPLOY.md) and the newest schema the package has.
SCHEMA_VERSIONS = ("1.29", kubernetes_validate.latest_version())
APP_IMAGE = "recsys-retrieval"
INDEX_SCRIPT, QUERY_SCRIPT, PUBLISH_SCRIPT = "recsys-index-service", "recsys-query-service", "recsys-publish"
SERVERS = {INDEX_SCRIPT: "index_service.server", QUERY_SCRIPT: "query_service.server"}
# The wrapper that lists the query replicas for recsys-publish (base/with-query-admin.sh).
PUBLISH_WRAPPER = "with-query-admin.sh"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "CronJob")


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    """The objects `kubectl kustomize` renders for ``overlay``."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    result = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict]:
    """The rendered objects of ``kind``, by name."""
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def pod_template(workload: dict) -> dict:
    """The pod template of a Deployment, StatefulSet, Job or CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]


def workloads(overlay: str) -> list[dict]:
    return [o for o in render(overlay) if o["kind"] in WORKLOAD_KINDS]


def is_app(container: dict) -> bool:
    """Whether the container runs the project's image (under whatever registry and tag an overlay gives it)."""
    return container["image"].split("/")[-1].split(":")[0] == APP_IMAGE


def app_containers(overlay: str) -> list[tuple[dict, dict]]:
    """(workload, container) for every container running the project's image (init containers excluded)."""
    return [(w, c) for w in workloads(overlay) for c in pod_template(w)["spec"]["containers"] if is_app(c)]


def argv_of(container: dict) -> list[str]:
    """The console script and its flags; the publish wrapper's own argv is dropped."""
    argv = [*container.get("command", []), *container.get("args", [])]
    if argv[:1] == ["sh"] and argv[1].endswith(PUBLISH_WRAPPER):
        return argv[2:]
    return argv


def script_of(container: dict) -> str:
    return argv_of(container)[0]


def containers_running(overlay: str, script: str) -> list[tuple[dict, dict]]:
    return [(w, c) for w, c in app_containers(overlay) if script_of(c) == script]


def environment(overlay: str, workload: dict, container: dict) -> dict[str, str]:
    """The container's environment as the pod would see it: envFrom ConfigMaps,
    then env (ConfigMap keys, the pod's labels); a value from a Secret is "<secret>"."""
    rendered_maps = objects(overlay, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: only ConfigMaps are read whole into the environment"
        env.update(rendered_maps[source["configMapRef"]["name"]]["data"])
    labels = pod_template(workload)["metadata"]["labels"]
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = rendered_maps[ref["name"]]["data"][ref["key"]]
        elif "fieldRef" in source:
            label = re.fullmatch(r"metadata\.labels\['([^']+)'\]", source["fieldRef"]["fieldPath"])
            assert label, f"{var['name']}: only pod labels are read from the downward API here"
            env[var["name"]] = labels[label.group(1)]
        else:
            assert "secretKeyRef" in source, f"{var['name']}: unexpected source {source}"
            env[var["name"]] = "<secret>"
    return env


@functools.cache
def scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def module_of(script: str):
    return importlib.import_module(scripts()[script].split(":", 1)[0])


def env_names(parser: argparse.ArgumentParser) -> set[str]:
    """The RECSYS_* variables a parser reads, as its help says (settings.flags writes `env RECSYS_X`)."""
    return {name for action in parser._actions for name in re.findall(r"\bRECSYS_\w+", action.help or "")}


def secret_file_paths(workload: dict, container: dict) -> dict[str, str]:
    """Every path under the container's Secret volume mounts -> the Secret key it holds."""
    volumes = {v["name"]: v for v in pod_template(workload)["spec"].get("volumes", [])}
    paths = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            for item in secret.get("items", []):
                paths[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = item["key"]
    return paths


def parse_container(overlay: str, workload: dict, container: dict, tmp_path: Path, monkeypatch):
    """Parses the container's flags and environment with its console script's own parser.
    A server's config is built and returned (its validation runs: e.g. a token off
    loopback); other scripts return their argparse namespace. A secret file the
    container reads is replaced by a local one holding a placeholder."""
    argv = argv_of(container)
    env = environment(overlay, workload, container)
    if container.get("command", [])[:1] == ["sh"]:
        env["RECSYS_QUERY_ADMIN"] = "10.0.0.1:50062"  # what the wrapper resolves at run time
    secrets = secret_file_paths(workload, container)
    for name in list(os.environ):
        if name.startswith("RECSYS_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.endswith("_FILE") and name.startswith("RECSYS_"):
            assert value in secrets, f"{workload['metadata']['name']}: ${name}={value} is not a mounted Secret key"
            local = tmp_path / secrets[value]
            local.write_text("placeholder-secret")
            value = str(local)
        monkeypatch.setenv(name, value)
    module = module_of(argv[0])
    parser = module.build_parser()
    unknown = {n for n in env if n.startswith("RECSYS_")} - env_names(parser)
    assert not unknown, f"{workload['metadata']['name']}: {argv[0]} reads no {sorted(unknown)}"
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"{workload['metadata']['name']}: `{' '.join(argv)}` is rejected by its parser (exit {e.code})")
    if argv[0] in SERVERS:
        from settings.flags import ConfigError, from_args

        config_class = {INDEX_SCRIPT: "IndexServiceConfig", QUERY_SCRIPT: "QueryServiceConfig"}[argv[0]]
        try:
            return from_args(getattr(module, config_class), args)
        except ConfigError as e:
            pytest.fail(f"{workload['metadata']['name']}: {argv[0]}'s config is refused: {e}")
    return args



# --- the schema ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schema(overlay, version):
    for obj in render(overlay):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{overlay}: {obj['kind']} {obj['metadata']['name']} is invalid for Kubernetes {version}: "
                        f"{e.message} at {list(e.path)}")


def test_the_validator_rejects_what_kubernetes_would():
    """The check above can fail: a probe without a port and an unknown field are refused."""
    deployment = next(o for o in render(OVERLAYS[0]) if o["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    del pod_template(broken)["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, SCHEMA_VERSIONS[-1], strict=True)
    unknown = yaml.safe_load(yaml.safe_dump(deployment))
    pod_template(unknown)["spec"]["containers"][0]["grpcProbe"] = {"port": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, SCHEMA_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_stack_is_complete(overlay):
    scripts_run = {script_of(c) for _, c in app_containers(overlay)}
    assert {INDEX_SCRIPT, QUERY_SCRIPT, PUBLISH_SCRIPT, "recsys-train"} <= scripts_run
    jobs = {script_of(c) for w, c in app_containers(overlay) if w["kind"] == "Job"}
    assert {"recsys-train", PUBLISH_SCRIPT} <= jobs, "the first training and the first rollout run as Jobs"
    assert "redis" in objects(overlay, "StatefulSet") and "redis" in objects(overlay, "Service")
    assert len(containers_running(overlay, INDEX_SCRIPT)) >= 2, "blue-green needs two index slots"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_in_the_overlay_namespace(overlay):
    """An object the overlay's namespace transformer never saw (one added beside a base)
    would land in whatever namespace kubectl defaults to, out of reach of the rest."""
    [namespace] = objects(overlay, "Namespace")
    for obj in render(overlay):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, f"{overlay}: {obj['kind']} {obj['metadata']['name']}"


RUN_ONCE = ("recsys.io/run", "once")  # the first deploy's Jobs, which later applies leave out (docs/DEPLOY.md)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_upgrade_applies_everything_but_the_first_deploys_jobs(overlay):
    """A Job's pod template is immutable: after a new image tag or config (whose generated name changes the
    template), applying the same Job again fails, and re-creating the trainer would publish a new version. The
    upgrade command of docs/DEPLOY.md selects them out by label; everything else must stay selected."""
    key, value = RUN_ONCE
    for obj in render(overlay):
        once = obj["metadata"].get("labels", {}).get(key) == value
        assert once == (obj["kind"] == "Job"), f"{overlay}: {obj['kind']} {obj['metadata']['name']}"
    assert f"kubectl apply -l '{key}!={value}' -f -" in DEPLOY_DOC.read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_image_loaded_into_the_nodes_is_used(overlay):
    """Kubernetes defaults the pull policy of a `:latest` (or untagged) image to Always: every
    start then pulls it from a registry, which for an image loaded into the nodes (`kind load`,
    as docs/DEPLOY.md deploys overlays/dev) does not have it, and no pod starts."""
    for workload in workloads(overlay):
        pod = pod_template(workload)["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            name = container["image"].split("@")[0].rsplit("/", 1)[-1]
            tag = name.split(":", 1)[1] if ":" in name else "latest"
            assert tag != "latest" or container.get("imagePullPolicy") in ("IfNotPresent", "Never"), (
                f"{overlay}: {workload['metadata']['name']}/{container['name']} pulls {container['image']} at "
                "every start")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_app_container_runs_one_image(overlay):
    """The index, query, trainer and rollout processes share the version format and the
    admin protocol: a pin that reaches some workloads and not others mixes releases."""
    images = {c["image"] for _, c in app_containers(overlay)}
    images |= {c["image"] for w in workloads(overlay) for c in pod_template(w)["spec"].get("initContainers", [])
               if is_app(c)}
    assert len(images) == 1, f"{overlay}: {sorted(images)}"


# --- commands and environment against the real CLIs -------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_commands_parse_with_the_real_cli(overlay, tmp_path, monkeypatch):
    for workload, container in app_containers(overlay):
        assert script_of(container) in scripts(), f"{workload['metadata']['name']} runs no declared console script"
        parse_container(overlay, workload, container, tmp_path, monkeypatch)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servers_listen_off_loopback_behind_an_admin_token(overlay, tmp_path, monkeypatch):
    for workload, container in [*containers_running(overlay, INDEX_SCRIPT), *containers_running(overlay, QUERY_SCRIPT)]:
        config = parse_container(overlay, workload, container, tmp_path, monkeypatch)
        assert config.host == config.admin.host == config.metrics_host == "0.0.0.0", "other pods reach every port"
        assert config.admin.token == "placeholder-secret", "the admin token comes from the mounted Secret"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert (ports["grpc"], ports["admin"], ports["metrics"]) == (config.port, config.admin.port,
                                                                     config.metrics_port)


# The pod annotations Prometheus's conventional Kubernetes scrape config (and most hosted agents) discovers targets by.
SCRAPE, SCRAPE_PORT, SCRAPE_PATH = "prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_metrics_port_is_annotated_for_prometheus(overlay):
    """A `metrics` port is found by nothing on its own: the pod template says where to scrape, on that port's
    number, and a pod without one is not marked for scraping (Prometheus would probe a port nobody serves)."""
    for workload in (o for o in render(overlay) if o["kind"] in ("Deployment", "StatefulSet")):
        template = pod_template(workload)
        ports = [p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
                 if p.get("name") == "metrics"]
        annotations = template["metadata"].get("annotations", {})
        where = f"{overlay}: {workload['kind']} {workload['metadata']['name']}"
        if not ports:
            assert SCRAPE not in annotations, f"{where} serves no metrics port"
            continue
        [port] = ports
        assert annotations.get(SCRAPE) == "true", f"{where}: no {SCRAPE} annotation on its pods"
        assert annotations.get(SCRAPE_PORT) == str(port), f"{where}: {SCRAPE_PORT} is not its metrics port {port}"
        assert annotations.get(SCRAPE_PATH) == "/metrics", where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servers_log_json_lines(overlay, tmp_path, monkeypatch):
    """A request id is written only in `--log-format json` lines (README, "Observability"): with text logs a
    deployment's logs cannot be joined to a failed call's x-request-id."""
    for workload, container in [*containers_running(overlay, INDEX_SCRIPT), *containers_running(overlay, QUERY_SCRIPT)]:
        config = parse_container(overlay, workload, container, tmp_path, monkeypatch)
        assert config.log_format == "json", f"{overlay}: {workload['metadata']['name']} logs {config.log_format}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_app_containers_set_the_native_libraries_log_levels(overlay):
    """As the image and compose do (tests/unit/test_deploy_logs.py): gRPC's INFO lines off, TensorFlow's errors on."""
    for workload, container in app_containers(overlay):
        env = environment(overlay, workload, container)
        assert NATIVE_LOG_ENV.items() <= env.items(), f"{overlay}: {workload['metadata']['name']}"


def index_processes(overlay: str, tmp_path: Path, monkeypatch) -> dict[str, tuple[str, int | None]]:
    """Index StatefulSet name -> (slot, shard) as its config says (shard None: unsharded)."""
    out = {}
    for workload, container in containers_running(overlay, INDEX_SCRIPT):
        config = parse_container(overlay, workload, container, tmp_path, monkeypatch)
        out[workload["metadata"]["name"]] = (config.slot, config.shard)
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_slot_and_shard_has_its_own_name(overlay, tmp_path, monkeypatch):
    """Two StatefulSets serving one slot and shard would each record the slot's version in
    the registry; a slot's shards, though, must share its name (recsys-publish loads a
    version into every process of the idle slot)."""
    held = list(index_processes(overlay, tmp_path, monkeypatch).values())
    assert len(set(held)) == len(held), f"{overlay}: (slot, shard) {held}"
    slots = {slot for slot, _ in held}
    assert "" not in slots and len(slots) >= 2, f"{overlay}: blue-green needs two named slots, not {slots}"


def trainer_shards(overlay: str, tmp_path: Path, monkeypatch) -> set[int]:
    """The --index-shards of every recsys-train container (Job and CronJob)."""
    return {parse_container(overlay, w, c, tmp_path, monkeypatch).index_shards
            for w, c in containers_running(overlay, "recsys-train")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_slot_serves_every_shard_the_trainer_publishes(overlay, tmp_path, monkeypatch):
    """An endpoint with --shard refuses an unsharded version and one without refuses a
    sharded one, and a version is routable only while each of its shards has a holder:
    every slot serves shards 0..N-1 of the trainer's --index-shards N, or is unsharded
    when N is 1."""
    published = trainer_shards(overlay, tmp_path, monkeypatch)
    assert len(published) == 1, f"{overlay}: the trainer Job and CronJob publish {published} shards"
    [shards] = published
    by_slot: dict[str, set[int | None]] = {}
    for slot, shard in index_processes(overlay, tmp_path, monkeypatch).values():
        by_slot.setdefault(slot, set()).add(shard)
    expected = {None} if shards == 1 else set(range(shards))
    for slot, served in by_slot.items():
        assert served == expected, f"{overlay}: slot {slot} serves shards {served}, the trainer publishes {shards}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_shard_has_two_replicas(overlay, tmp_path, monkeypatch):
    """Every query searches every shard: a shard of one replica would make every request
    depend on one pod, with no replica to fail over or hedge to."""
    processes = index_processes(overlay, tmp_path, monkeypatch)
    for workload, _ in index_slots(overlay):
        if processes[workload["metadata"]["name"]][1] is not None:
            assert workload["spec"].get("replicas", 1) >= 2, f"{overlay}: {workload['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_query_service_shares_a_cache_key_and_uses_the_redis_service(overlay, tmp_path, monkeypatch):
    [(workload, container)] = containers_running(overlay, QUERY_SCRIPT)
    cache = parse_container(overlay, workload, container, tmp_path, monkeypatch).cache
    assert cache.mac_key == "placeholder-secret", "replicas must share one cache key, or none shares a cached value"
    url = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", cache.url)
    assert url, cache.url
    service = objects(overlay, "Service")[url.group(1)]
    assert int(url.group(2)) in {p["port"] for p in service["spec"]["ports"]}


# --- probes -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_probes_are_native_grpc_on_the_data_port(overlay, tmp_path, monkeypatch):
    for script, module in SERVERS.items():
        reported = {"", importlib.import_module(module).SERVICE_NAME}  # what the server sets SERVING
        for workload, container in containers_running(overlay, script):
            port = parse_container(overlay, workload, container, tmp_path, monkeypatch).port
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind)
                assert probe and "grpc" in probe, f"{workload['metadata']['name']}: {kind} must be a grpc probe"
                assert probe["grpc"]["port"] == port, f"{workload['metadata']['name']}: {kind} probes another port"
                assert probe["grpc"].get("service", "") in reported, f"{kind} asks for a service nobody reports"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_empty_index_slot_is_ready(overlay):
    """recsys.v1.IndexService is SERVING only while a slot holds a version; readiness on it
    would hide an empty slot from the rollout that has to load it."""
    for workload, container in containers_running(overlay, INDEX_SCRIPT):
        assert container["readinessProbe"]["grpc"].get("service", "") == "", workload["metadata"]["name"]


# --- discovery ----------------------------------------------------------------------


def selector_of(obj: dict) -> dict[str, str]:
    """The labels a Service or a PodDisruptionBudget selects pods by."""
    selector = obj["spec"]["selector"]
    return selector if obj["kind"] == "Service" else selector["matchLabels"]


def index_slots(overlay: str) -> list[tuple[dict, dict]]:
    """(StatefulSet, its headless Service) for every index slot."""
    services = objects(overlay, "Service")
    out = []
    for workload, _ in containers_running(overlay, INDEX_SCRIPT):
        assert workload["kind"] == "StatefulSet", "a slot's replicas need stable names: a StatefulSet"
        out.append((workload, services[workload["spec"]["serviceName"]]))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_index_slot_has_a_headless_service(overlay):
    for workload, service in index_slots(overlay):
        spec = service["spec"]
        assert spec.get("clusterIP") == "None", f"{service['metadata']['name']} must be headless"
        assert spec.get("publishNotReadyAddresses") is True, "a starting or empty slot must still resolve"
        labels = pod_template(workload)["metadata"]["labels"]
        assert spec["selector"].items() <= labels.items(), f"{service['metadata']['name']} does not select its pods"
        others = [w for w, _ in index_slots(overlay) if w is not workload]
        for other in others:
            assert not spec["selector"].items() <= pod_template(other)["metadata"]["labels"].items(), (
                f"{service['metadata']['name']} also selects {other['metadata']['name']}'s pods")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_slot_and_shard_has_its_own_service_and_budget(overlay):
    """A (slot, shard)'s replicas are each other's failover: its headless Service and its
    PodDisruptionBudget select exactly its pods, no other shard's or slot's."""
    slots = index_slots(overlay)
    for kind in ("Service", "PodDisruptionBudget"):
        for workload, _ in slots:
            name = workload["metadata"]["name"]
            labels = pod_template(workload)["metadata"]["labels"]
            selecting = [o for o in objects(overlay, kind).values() if selector_of(o).items() <= labels.items()]
            assert len(selecting) == 1, f"{overlay}: {name}: {len(selecting)} {kind}s select its pods"
            assert kind != "Service" or selecting[0]["metadata"]["name"] == workload["spec"]["serviceName"]
            others = [w["metadata"]["name"] for w, _ in slots if w is not workload
                      and selector_of(selecting[0]).items() <= pod_template(w)["metadata"]["labels"].items()]
            assert not others, f"{overlay}: {kind} {selecting[0]['metadata']['name']} also selects {others}' pods"


def pod_addresses(overlay: str, port_name: str) -> set[str]:
    """<statefulset>-<ordinal>.<service>:<port> of every pod of every index slot."""
    out = set()
    for workload, service in index_slots(overlay):
        port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == port_name)
        for ordinal in range(workload["spec"].get("replicas", 1)):
            out.add(f"{workload['metadata']['name']}-{ordinal}.{service['metadata']['name']}:{port}")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_query_service_routes_over_every_index_pod(overlay, tmp_path, monkeypatch):
    [(workload, container)] = containers_running(overlay, QUERY_SCRIPT)
    addresses = set(parse_container(overlay, workload, container, tmp_path, monkeypatch).index.addresses)
    assert addresses == pod_addresses(overlay, "grpc")
    named = {a.split(":")[0].split(".", 1)[1] for a in addresses}
    assert named == {s["metadata"]["name"] for _, s in index_slots(overlay)}, "every index Service is named"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rollout_reaches_every_index_admin_plane(overlay, tmp_path, monkeypatch):
    publishers = containers_running(overlay, PUBLISH_SCRIPT)
    assert publishers
    for workload, container in publishers:
        args = parse_container(overlay, workload, container, tmp_path, monkeypatch)
        if args.rollback:
            continue  # it loads nothing into a slot (the next test)
        assert set(args.index_admin) == pod_addresses(overlay, "admin"), workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_rollback_waits_on_no_index_replica(overlay, tmp_path, monkeypatch):
    """A rollback switches the query replicas only, yet recsys-publish first connects to every
    admin plane it is given and gives up if one does not answer: an index replica crash-looping
    on the new version (a reason to roll back) would stop the rollback."""
    rollbacks = [(w, c) for w, c in containers_running(overlay, PUBLISH_SCRIPT) if "--rollback" in argv_of(c)]
    assert rollbacks
    for workload, container in rollbacks:
        args = parse_container(overlay, workload, container, tmp_path, monkeypatch)
        assert not args.index_admin, f"{workload['metadata']['name']} waits on every index replica"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rollouts_after_the_first_list_the_query_replicas(overlay, tmp_path, monkeypatch):
    """A rollout or rollback loads and promotes on every query replica: the wrapper finds them
    through a headless Service that selects the query pods, starting ones included."""
    query = next(w for w, _ in containers_running(overlay, QUERY_SCRIPT))
    wrapper = (K8S / "base" / PUBLISH_WRAPPER).read_text()
    service_name = re.search(r'getaddrinfo\("([^"]+)", port', wrapper).group(1)
    port = int(re.search(r"^port = (\d+)$", wrapper, re.M).group(1))
    service = objects(overlay, "Service")[service_name]
    assert service["spec"]["clusterIP"] == "None" and service["spec"].get("publishNotReadyAddresses") is True
    assert service["spec"]["selector"].items() <= pod_template(query)["metadata"]["labels"].items()
    assert port == next(p["containerPort"] for p in query["spec"]["template"]["spec"]["containers"][0]["ports"]
                        if p["name"] == "admin")
    later = [(w, c) for w, c in containers_running(overlay, PUBLISH_SCRIPT) if w["kind"] == "CronJob"]
    assert {"--rollback" in argv_of(c) for _, c in later} == {True, False}, "a rollout and a rollback template"
    for workload, container in later:
        assert container["command"][:2] == ["sh", f"/etc/recsys/scripts/{PUBLISH_WRAPPER}"]
        assert workload["spec"]["suspend"] is True, "run on demand only (kubectl create job --from=cronjob/...)"


# --- availability, scaling, resources, security ---------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_and_statefulset_has_a_pod_disruption_budget(overlay):
    budgets = objects(overlay, "PodDisruptionBudget").values()
    for workload in (o for o in render(overlay) if o["kind"] in ("Deployment", "StatefulSet")):
        labels = pod_template(workload)["metadata"]["labels"]
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, f"{workload['metadata']['name']}: {len(covering)} PodDisruptionBudgets"
        # A budget that allows no eviction at all blocks every node drain.
        assert covering[0]["spec"].get("maxUnavailable", 0) >= 1 or (
            covering[0]["spec"]["minAvailable"] < workload["spec"].get("replicas", 1))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_query_deployment_scales_on_cpu(overlay):
    [(deployment, container)] = containers_running(overlay, QUERY_SCRIPT)
    assert deployment["kind"] == "Deployment"
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    [hpa] = [h for h in objects(overlay, "HorizontalPodAutoscaler").values()
             if h["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]]
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in container["resources"]["requests"], "utilization is measured against the CPU request"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_a_memory_limit_and_runs_unprivileged(overlay):
    for workload in workloads(overlay):
        pod = pod_template(workload)["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod.get("automountServiceAccountToken") is False, "no pod here talks to the API server"
        mounts_by_volume = {v["name"]: v for v in pod.get("volumes", [])}
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{overlay}: {workload['metadata']['name']}/{container['name']}"
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), where
            assert "memory" in resources["limits"], f"{where}: no memory limit"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
            assert security["readOnlyRootFilesystem"] is True, where
            if container in pod["containers"] and is_app(container):  # TensorFlow, Keras and Matplotlib write there
                tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
                assert tmp and "emptyDir" in mounts_by_volume[tmp[0]["name"]], f"{where}: no writable /tmp"


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups()
    return int(number) * units.get(unit, 1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_memory_requests_fit_within_their_limits(overlay):
    for workload in workloads(overlay):
        for container in pod_template(workload)["spec"]["containers"]:
            resources = container["resources"]
            assert memory_bytes(resources["requests"]["memory"]) <= memory_bytes(resources["limits"]["memory"])


# --- the registry volume and referenced objects ------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_app_pod_mounts_the_shared_registry_where_the_flags_say(overlay):
    claims = objects(overlay, "PersistentVolumeClaim")
    for workload, container in app_containers(overlay):
        volumes = {v["name"]: v for v in pod_template(workload)["spec"]["volumes"]}
        registry = environment(overlay, workload, container)["RECSYS_REGISTRY"]
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == registry]
        claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
        assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"], "pods on several nodes share it"
        writes = script_of(container) != QUERY_SCRIPT  # slots record their version; the query tier only reads
        name = workload["metadata"]["name"]
        assert mount.get("readOnly", False) is not writes, f"{name}: readOnly should be {not writes}"


def external_secrets() -> set[str]:
    """Secrets an overlay may leave to the operator: those docs/DEPLOY.md says how to create."""
    return set(re.findall(r"kubectl[^\n]*create secret generic ([a-z0-9-]+)", DEPLOY_DOC.read_text()))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_referenced_config_map_secret_and_claim_exists(overlay):
    rendered = {kind: set(objects(overlay, kind)) for kind in ("ConfigMap", "Secret", "PersistentVolumeClaim")}
    for workload in workloads(overlay):
        pod = pod_template(workload)["spec"]
        refs = []
        for volume in pod.get("volumes", []):
            refs += [("ConfigMap", volume["configMap"]["name"])] if "configMap" in volume else []
            refs += [("Secret", volume["secret"]["secretName"])] if "secret" in volume else []
            if "persistentVolumeClaim" in volume:
                refs.append(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            refs += [("ConfigMap", s["configMapRef"]["name"]) for s in container.get("envFrom", [])]
            refs += [("ConfigMap", v["valueFrom"]["configMapKeyRef"]["name"]) for v in container.get("env", [])
                     if "configMapKeyRef" in v.get("valueFrom", {})]
        for kind, name in refs:
            if name in rendered[kind]:
                continue
            assert kind == "Secret" and name in external_secrets(), (
                f"{overlay}: {workload['metadata']['name']} needs {kind} {name!r}, which is neither rendered nor "
                "one docs/DEPLOY.md tells the operator to create")


# --- who reaches which port ------------------------------------------------------------

# The commands that call the admin planes (load, promote, catalogue deltas, status).
ADMIN_TOOLS = (PUBLISH_SCRIPT, "recsys-catalogue", "recsys-client")


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector selects a pod with ``labels`` (only matchLabels are modelled: others fail)."""
    assert selector.keys() <= {"matchLabels"}, f"a selector this test does not model: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def admits(overlay: str, source: dict, target: dict, port: dict) -> bool:
    """Whether a pod of the namespace labelled ``source`` may connect to container ``port`` of a pod labelled
    ``target`` under the overlay's NetworkPolicies: a pod no Ingress policy selects takes every connection; a
    selected one only those a rule of its policies allows (a rule without ports or peers allows all of them)."""
    policies = [p["spec"] for p in objects(overlay, "NetworkPolicy").values()
                if selects(p["spec"]["podSelector"], target) and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not policies:
        return True
    for rule in (rule for policy in policies for rule in policy.get("ingress", [])):
        ports = rule.get("ports") or [{}]
        peers = rule.get("from") or [{"podSelector": {}}]
        assert all(peer.keys() == {"podSelector"} for peer in peers), f"peers this test does not model: {peers}"
        if (any(p.get("port", port["name"]) in (port["name"], port["containerPort"])
                and p.get("protocol", "TCP") == port.get("protocol", "TCP") for p in ports)
                and any(selects(peer["podSelector"], source) for peer in peers)):
            return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_admin_tools_reach_the_admin_planes_and_only_the_query_service_reaches_redis(overlay):
    """The admin planes take a bearer token over plaintext gRPC, and Redis has no password: a pod that needs
    neither (a server, the trainer, a stranger's debugging pod) must not reach them, while every data and
    metrics port stays open to all (clients, probes, Prometheus)."""
    pods = {w["metadata"]["name"]: pod_template(w) for w in workloads(overlay)}
    sources = {name: template["metadata"]["labels"] for name, template in pods.items()} | {"a stranger's pod": {}}
    admin_tools = {w["metadata"]["name"] for w, c in app_containers(overlay) if script_of(c) in ADMIN_TOOLS}
    query = {w["metadata"]["name"] for w, _ in containers_running(overlay, QUERY_SCRIPT)}
    assert admin_tools and query
    checked = set()
    for target, template in pods.items():
        for port in (p for c in template["spec"]["containers"] for p in c.get("ports", [])):
            for source, labels in sources.items():
                expected = {"admin": source in admin_tools, "redis": source in query}.get(port["name"], True)
                reached = admits(overlay, labels, template["metadata"]["labels"], port)
                assert reached == expected, f"{overlay}: {source} {'reaches' if reached else 'cannot reach'} " \
                                            f"{target}'s {port['name']} port"
            checked.add(port["name"])
    assert {"admin", "redis", "grpc", "metrics"} <= checked
    # Another Redis in the namespace (a chart's, with the same name label) is not this project's to close.
    assert admits(overlay, {}, {"app.kubernetes.io/name": "redis"}, {"name": "redis", "containerPort": 6379})
