"""Static checks of docker-compose.yml and the Dockerfile against the package.

No Docker engine is needed: the compose file is parsed with PyYAML, every app
service's command is checked against the console scripts that pyproject.toml
declares and parsed by that script's own argparse parser, so a renamed CLI or
flag breaks this test rather than the deployment. If the `docker compose` CLI
plugin is installed, `docker compose config -q` validates the file against the
compose schema too (it needs no running engine); elsewhere that test skips.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

INDEX_SLOTS = ("index-blue", "index-green")
SERVERS = (*INDEX_SLOTS, "query-service")
JOBS = ("trainer", "rollout")
APP_SERVICES = (*JOBS, *SERVERS)
ALL_SERVICES = ("redis", *APP_SERVICES)
REGISTRY_MOUNT = "/registry"
EXPECTED_SCRIPT = {
    "trainer": "recsys-train",
    "index-blue": "recsys-index-service",
    "index-green": "recsys-index-service",
    "rollout": "recsys-publish",
    "query-service": "recsys-query-service",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    with COMPOSE_FILE.open() as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["scripts"]


@pytest.fixture
def clean_env(monkeypatch):
    """Flags may default from RECSYS_* variables; the compose command alone must
    be complete, so none may leak in from the environment running the tests."""
    for name in list(os.environ):
        if name.startswith("RECSYS_"):
            monkeypatch.delenv(name)


def as_argv(command) -> list[str]:
    """A compose `command` (list, or string split like a shell would) as argv."""
    if isinstance(command, str):
        return shlex.split(command)
    assert isinstance(command, list), f"command must be a list or a string, got {command!r}"
    return [str(a) for a in command]


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value given to `flag` in argv (`--flag V` or `--flag=V`), else None."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def parser_for(script: str, scripts: dict[str, str]) -> argparse.ArgumentParser:
    """The argparse parser behind a console script: entry point "pkg.mod:main"
    -> pkg.mod.build_parser()."""
    module_name = scripts[script].split(":", 1)[0]
    module = importlib.import_module(module_name)
    build = getattr(module, "build_parser", None)
    assert callable(build), f"{module_name} must expose build_parser() for {script}"
    parser = build()
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def parse(script: str, args: list[str], scripts: dict[str, str]) -> argparse.Namespace:
    parser = parser_for(script, scripts)
    try:
        return parser.parse_args(args)
    except SystemExit as e:  # argparse reports bad flags on stderr and exits 2
        pytest.fail(f"`{script} {shlex.join(args)}` is rejected by its argparse parser (exit {e.code})")


def healthcheck_argv(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    if test[0] == "CMD":
        return [str(a) for a in test[1:]]
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1])
    raise AssertionError(f"unexpected healthcheck test form: {test!r}")


# --- structure --------------------------------------------------------------


def test_services_exist(services):
    for name in ALL_SERVICES:
        assert name in services, f"docker-compose.yml has no service {name!r}"


def test_redis_is_redis7_without_persistence(services):
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    argv = as_argv(redis.get("command", []))
    assert flag_value(argv, "--save") == "", "redis must not write RDB snapshots"
    assert flag_value(argv, "--appendonly") == "no", "redis must not write an AOF"
    assert "redis-cli" in healthcheck_argv(redis)
    assert not redis.get("volumes"), "a cache-only redis needs no volume"


def test_app_services_share_one_image_built_from_the_dockerfile(services):
    images = {services[n].get("image") for n in APP_SERVICES}
    assert len(images) == 1, f"app services should run one image, got {images}"
    for name in APP_SERVICES:
        build = services[name].get("build")
        assert build, f"{name} must say how its image is built"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE


@pytest.mark.parametrize("name", JOBS)
def test_jobs_run_once(services, name):
    job = services[name]
    assert str(job.get("restart", "no")) == "no"
    assert "healthcheck" not in job
    assert "ports" not in job


def test_training_publishes_and_only_the_rollout_makes_a_version_live(services):
    assert "--initial" in as_argv(services["rollout"]["command"])  # the first rollout; later ones are run by hand
    assert not {"--promote", "--rollout"} & set(as_argv(services["trainer"]["command"]))


# --- commands against the package's console scripts -------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_command_starts_with_a_declared_console_script(services, scripts, name):
    argv = as_argv(services[name]["command"])
    assert argv[0] in scripts, f"{name} runs {argv[0]!r}, not a [project.scripts] entry {sorted(scripts)}"
    assert argv[0] == EXPECTED_SCRIPT[name]
    assert "entrypoint" not in services[name], "the command must be the console script itself"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_command_flags_are_accepted_by_the_cli(services, scripts, clean_env, name):
    argv = as_argv(services[name]["command"])
    parse(argv[0], argv[1:], scripts)


@pytest.mark.parametrize("name", SERVERS)
def test_healthcheck_uses_recsys_client_health_on_the_service_port(services, scripts, clean_env, name):
    service = services[name]
    check = healthcheck_argv(service)
    assert check[:2] == ["recsys-client", "health"], f"{name} healthcheck: {check}"
    assert check[0] in scripts
    parse(check[0], check[1:], scripts)
    address = flag_value(check, "--address")
    assert address, f"{name} healthcheck needs --address"
    port = flag_value(as_argv(service["command"]), "--port")
    assert address.rsplit(":", 1)[1] == port, f"{name} healthcheck probes {address}, service listens on {port}"


def test_services_listen_on_all_interfaces(services):
    for name in SERVERS:
        argv = as_argv(services[name]["command"])
        for flag in ("--host", "--admin-host"):  # the rollout job reaches the admin planes over the network
            assert flag_value(argv, flag) == "0.0.0.0", f"{name} must bind {flag} 0.0.0.0 for other containers"


def test_each_slot_has_its_own_name(services):
    names = [flag_value(as_argv(services[name]["command"]), "--slot") for name in INDEX_SLOTS]
    assert len(set(names)) == len(INDEX_SLOTS) and None not in names


def endpoints(value: str) -> set[tuple[str, str]]:
    return {tuple(address.rsplit(":", 1)) for address in value.split(",")}


def test_query_service_routes_over_every_slot_and_the_rollout_reaches_every_admin_plane(services):
    slots = {(name, flag_value(as_argv(services[name]["command"]), "--port")) for name in INDEX_SLOTS}
    admins = {(name, flag_value(as_argv(services[name]["command"]), "--admin-port")) for name in INDEX_SLOTS}
    assert endpoints(flag_value(as_argv(services["query-service"]["command"]), "--index-address")) == slots
    assert endpoints(flag_value(as_argv(services["rollout"]["command"]), "--index-admin")) == admins


def test_query_service_uses_redis(services):
    argv = as_argv(services["query-service"]["command"])
    url = urlsplit(flag_value(argv, "--redis-url"))
    assert url.scheme == "redis" and url.hostname == "redis" and url.hostname in services
    assert (url.port or 6379) == 6379


def test_only_the_query_service_is_published(services):
    published = {n for n, s in services.items() if s.get("ports")}
    assert published == {"query-service"}
    port = flag_value(as_argv(services["query-service"]["command"]), "--port")
    targets = {str(p).rsplit(":", 1)[-1] for p in services["query-service"]["ports"]}
    assert port in targets, f"query-service listens on {port}, publishes {targets}"


# --- the later runs the compose file and the README document ----------------------


def documented_runs() -> list[tuple[str, list[str]]]:
    """(where, argv after `run`) of every `docker compose ... run ...` in docker-compose.yml's
    comments and README.md's code blocks, continuation lines joined."""
    comments = "\n".join(line.lstrip("#") for line in COMPOSE_FILE.read_text().splitlines()
                         if line.startswith("#"))
    out = []
    for where, text in (("docker-compose.yml", comments), ("README.md", (ROOT / "README.md").read_text())):
        for line in re.sub(r"\\\n\s*", " ", text).splitlines():
            found = re.search(r"docker compose( .*)$", line.split("  # ")[0])
            argv = shlex.split(found.group(1)) if found else []
            if "run" in argv:
                out.append((where, argv[argv.index("run") + 1:]))
    return out


def compose_environment(compose) -> dict[str, str]:
    """x-app's environment as a container gets it with nothing set on the host (`${X:-default}` -> default)."""
    return {name: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
            for name, value in compose["x-app"]["environment"].items()}


def test_documented_runs_start_nothing_else_and_parse(compose, services, scripts, clean_env, monkeypatch):
    """`docker compose run` first starts the service's dependencies, and a finished one-shot
    one (the trainer, through the index slots) runs again: a rollback would wait for a whole
    training and a rollout would take the version that training published, not the one meant.
    The stack is up when these run, so each needs --no-deps; its command parses with the
    service's environment."""
    runs = documented_runs()
    assert {where for where, _ in runs} == {"docker-compose.yml", "README.md"}
    for name, value in compose_environment(compose).items():
        monkeypatch.setenv(name, value)
    for where, argv in runs:
        options = list(itertools.takewhile(lambda a: a.startswith("-"), argv))
        service, command = argv[len(options)], argv[len(options) + 1:]
        assert service in services, f"{where}: `run {shlex.join(argv)}` names no service"
        if services[service].get("depends_on"):
            assert "--no-deps" in options, f"{where}: `run {shlex.join(argv)}` starts {service}'s dependencies again"
        if command:
            assert command[0] == EXPECTED_SCRIPT[service], f"{where}: {service} runs {command[0]}"
            parse(command[0], command[1:], scripts)


# --- volumes and start-up order ----------------------------------------------


def test_registry_volume_is_shared_and_matches_the_registry_flag(compose, services):
    assert "registry" in (compose.get("volumes") or {}), "named volume 'registry' must be declared"
    for name in APP_SERVICES:
        mounts = [str(v) for v in services[name].get("volumes", [])]
        assert f"registry:{REGISTRY_MOUNT}" in mounts or f"registry:{REGISTRY_MOUNT}:rw" in mounts, (
            f"{name} must mount the registry volume at {REGISTRY_MOUNT}, has {mounts}"
        )
        argv = as_argv(services[name]["command"])
        assert flag_value(argv, "--registry") == REGISTRY_MOUNT
        assert flag_value(argv, "--model") == "demo"


def test_every_named_volume_is_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":", 1)[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source!r}"


def test_depends_on_references_existing_services(services):
    for name, service in services.items():
        deps = service.get("depends_on", {})
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            assert dep != name


def test_start_up_order(services):
    def condition(name, dep):
        deps = services[name].get("depends_on", {})
        assert isinstance(deps, dict), f"{name}.depends_on must use conditions"
        assert dep in deps, f"{name} must depend on {dep}"
        return deps[dep]["condition"]

    for name in INDEX_SLOTS:
        assert condition(name, "trainer") == "service_completed_successfully"
        assert condition("rollout", name) == "service_healthy"
    for name in SERVERS:
        assert "healthcheck" in services[name]
    assert condition("query-service", "rollout") == "service_completed_successfully"
    assert condition("query-service", "redis") == "service_healthy"


# --- Dockerfile ----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        logical.append(current)
        current = ""
    out = []
    for instr in logical:
        keyword, _, rest = instr.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_installs_the_package():
    assert DOCKERFILE.is_file()
    instructions = dockerfile_instructions()
    froms = [args for kw, args in instructions if kw == "FROM"]
    assert froms and froms[0].split()[0] == "python:3.11-slim-bookworm"
    runs = " && ".join(args for kw, args in instructions if kw == "RUN")
    assert re.search(r"pip install [^&;|]*(?<=\s)\.(\s|$)", runs), "the Dockerfile must `pip install .`"
    copied = " ".join(args for kw, args in instructions if kw in ("COPY", "ADD"))
    assert "pyproject.toml" in copied or copied.split()[:1] == ["."]


def copy_sources() -> list[str]:
    """Source paths of every COPY/ADD (flags like --chown dropped, destination dropped)."""
    return [
        src.rstrip("/") or "/"
        for kw, args in dockerfile_instructions() if kw in ("COPY", "ADD")
        for src in args.split()[:-1] if not src.startswith("--")
    ]


def test_dockerfile_copies_every_package_the_project_declares():
    with (ROOT / "pyproject.toml").open("rb") as f:
        includes = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.rstrip("*").rstrip(".") for p in includes]
    sources = copy_sources()
    if "." in sources:  # the whole context: .dockerignore must let the packages through
        ignored = {
            line.strip().strip("/") for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        }
        for package in packages:
            assert package not in ignored, f".dockerignore excludes package {package}/"
    else:
        for package in packages:
            assert package in sources, f"Dockerfile does not COPY package {package}/"


def test_no_data_set_goes_into_the_image():
    sources = [src.lower() for src in copy_sources()]
    for name in ("data", "ml-100k", "movielens", "registry", "demo-run"):
        assert not any(name in Path(src).name for src in sources if src != "model_registry"), (
            f"the image must not contain {name!r} (copied: {sources})"
        )


def test_dockerignore_keeps_local_state_out():
    patterns = {
        line.strip().lstrip("/").rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".git", ".venv", "registry", "demo-run", "data", "ml-100k", "**/__pycache__", ".pytest_cache"):
        assert needed in patterns, f".dockerignore must exclude {needed}"


# --- the compose schema, where the CLI is installed ----------------------------


def docker_compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose`, if either works here."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cli in candidates:
        try:
            ok = subprocess.run([*cli, "version"], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return cli
    return None


def test_docker_compose_config_is_valid():
    cli = docker_compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI here")
    # `config` only reads and validates the file: it needs no Docker engine.
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
