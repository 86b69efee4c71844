"""The production topology as files: docker-compose.yml, its helpers under deploy/, the Dockerfile,
and the image's entry point (launch.serve).

No Docker engine runs on these machines. The compose file is validated against the compose-spec
JSON schema that the PyPI package ``check-jsonschema`` vendors (never downloaded at test time),
compose's variable interpolation is applied the way compose applies it, and the properties a
platform team relies on are asserted one by one. The search-attribute one-shot script is run for
real against a Temporal dev server from the venv.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from sqlalchemy import create_engine, inspect

from engine.database import sync_url
from engine.settings import DEV_SECRET, PROJECT_ROOT, Settings
from launch import serve
from testing.http import QuietHandler, http_server
from testing.processes import free_port
from workflows.contract import SEARCH_ATTRIBUTES

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
WEBHOOKS_OVERRIDE = PROJECT_ROOT / "deploy" / "compose.webhooks.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"

# Values a deployer would export; long enough for the production settings' checks.
DEPLOY_ENV = {
    "POSTGRES_PASSWORD": "pg-superuser-" + "x" * 24,
    "TEMPORAL_DB_PASSWORD": "temporal-db-" + "y" * 24,
    "PROGRESSION_DB_PASSWORD": "progression-db-" + "z" * 24,
    "PROGRESSION_SECRET_KEY": "s" * 48,
    "PROGRESSION_WEBHOOK_URL": "https://deploy.bank.example/hooks/progression",
    "PROGRESSION_WEBHOOK_SECRET": "w" * 48,
}
REQUIRED_VARS = {"POSTGRES_PASSWORD", "TEMPORAL_DB_PASSWORD", "PROGRESSION_DB_PASSWORD", "PROGRESSION_SECRET_KEY"}
SECRET_KEY_RE = re.compile(r"(PASSWORD|PWD|SECRET|TOKEN|API_KEY|SECRET_KEY)$", re.IGNORECASE)
APP_SERVICES = ("migrate", "api", "worker")

# --- compose semantics the tests need: YAML with anchors, then variable interpolation ----------


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name}: not a mapping"
    return data


class MissingVariable(Exception):
    pass


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


def interpolate_str(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?err}, ${VAR?err}, ${VAR:+a}."""

    def replace(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("invalid") is not None:
            raise ValueError(f"invalid interpolation in {value!r}")
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        present = name in env
        nonempty = bool(env.get(name))
        if op is None:
            return env.get(name, "")
        if op == ":-":
            return env[name] if nonempty else interpolate_str(arg, env)
        if op == "-":
            return env[name] if present else interpolate_str(arg, env)
        if op in (":?", "?"):
            if (op == ":?" and not nonempty) or (op == "?" and not present):
                raise MissingVariable(f"required variable {name} is missing a value: {arg}")
            return env[name]
        if op == ":+":
            return interpolate_str(arg, env) if nonempty else ""
        raise ValueError(f"unsupported interpolation {m.group(0)!r}")

    return _VAR.sub(replace, value)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_str(node, env)
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    return node


def variables_in(node: Any) -> Iterator[tuple[str, str | None, str]]:
    """(name, operator, argument) of every interpolation in the document."""
    if isinstance(node, str):
        for m in _VAR.finditer(node):
            name = m.group("braced") or m.group("named")
            if name:
                yield name, m.group("op"), m.group("arg") or ""
    elif isinstance(node, dict):
        for v in node.values():
            yield from variables_in(v)
    elif isinstance(node, list):
        for v in node:
            yield from variables_in(v)


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def merge_override(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Compose's merge for the parts our override uses: mappings merge, scalars replace."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge_override(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture(scope="module")
def compose_validator() -> Any:
    """A validator of the compose-spec schema, the schema itself checked against its meta-schema once."""
    text = (resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    schema = json.loads(text)
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    return validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def deployed(compose: dict[str, Any]) -> dict[str, Any]:
    """The compose file as compose sees it once the deployer's variables are exported."""
    return interpolate(compose, DEPLOY_ENV)


def schema_errors(validator: Any, document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(document)]


# --- the compose-spec schema ---------------------------------------------------------------------


def test_compose_file_validates_against_compose_spec(compose_validator: Any, compose: dict[str, Any],
                                                     deployed: dict[str, Any]) -> None:
    assert schema_errors(compose_validator, compose) == []
    assert schema_errors(compose_validator, deployed) == []


def test_webhooks_override_validates_alone_and_merged(compose_validator: Any,
                                                      compose: dict[str, Any]) -> None:
    override = load_yaml(WEBHOOKS_OVERRIDE)
    assert schema_errors(compose_validator, override) == []
    merged = interpolate(merge_override(compose, override), DEPLOY_ENV)
    assert schema_errors(compose_validator, merged) == []
    worker_env = environment_of(merged["services"]["worker"])
    assert worker_env["PROGRESSION_PROMOTION_TARGET"] == "webhook"
    assert worker_env["PROGRESSION_WEBHOOK_SECRET"] == DEPLOY_ENV["PROGRESSION_WEBHOOK_SECRET"]
    # The merged worker environment is a valid production configuration with webhooks on.
    settings = Settings(**{k.removeprefix("PROGRESSION_").lower(): v for k, v in worker_env.items()
                           if k.startswith("PROGRESSION_")})
    assert settings.promotion_target == "webhook" and settings.webhook_url == DEPLOY_ENV["PROGRESSION_WEBHOOK_URL"]
    # Without the URL or the secret, compose refuses the override.
    for name in ("PROGRESSION_WEBHOOK_URL", "PROGRESSION_WEBHOOK_SECRET"):
        env = {k: v for k, v in DEPLOY_ENV.items() if k != name}
        with pytest.raises(MissingVariable, match=name):
            interpolate(override, env)


def test_schema_validation_is_not_vacuous(compose_validator: Any, compose: dict[str, Any]) -> None:
    """Typical mistakes are caught by the same validation the real file passes."""
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_finished"
    assert any("service_finished" in e for e in schema_errors(compose_validator, broken))
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["deploy"]["replica"] = broken["services"]["worker"]["deploy"].pop("replicas")
    assert any("replica" in e for e in schema_errors(compose_validator, broken))
    broken = copy.deepcopy(compose)
    broken["services"]["postgres"]["helthcheck"] = broken["services"]["postgres"].pop("healthcheck")
    assert any("helthcheck" in e for e in schema_errors(compose_validator, broken))


def test_real_compose_implementation_accepts_the_file_when_installed() -> None:
    """`docker compose config` when a compose implementation is on PATH (not on CI machines)."""
    docker = shutil.which("docker")
    candidates: list[list[str]] = []
    if shutil.which("docker-compose"):
        candidates.append([str(shutil.which("docker-compose"))])
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        candidates.append([docker, "compose"])
    if not candidates:
        pytest.skip("no docker compose implementation on PATH; the compose-spec schema tests cover the file")
    cmd = candidates[0]
    env = {**os.environ, **DEPLOY_ENV}
    files = ["-f", str(COMPOSE_FILE), "-f", str(WEBHOOKS_OVERRIDE)]
    ok = subprocess.run([*cmd, *files, "config", "--quiet"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bare = {k: v for k, v in os.environ.items() if k not in DEPLOY_ENV}
    refused = subprocess.run([*cmd, "-f", str(COMPOSE_FILE), "config", "--quiet"], env=bare,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "is missing a value" in refused.stderr


# --- properties that matter -------------------------------------------------------------------------


def test_topology_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "postgres", "temporal", "search-attributes", "temporal-ui", "migrate", "api", "worker"
    }


PINNED_TAG = re.compile(r"^[a-z0-9./_-]+:(?!latest$)[A-Za-z0-9_.-]*\d[A-Za-z0-9_.-]*(@sha256:[0-9a-f]{64})?$")


def test_every_service_has_a_pinned_image_or_a_build(deployed: dict[str, Any]) -> None:
    for name, service in deployed["services"].items():
        image = service.get("image")
        assert image or service.get("build"), f"{name}: neither image nor build"
        if image:
            assert PINNED_TAG.match(image), f"{name}: image {image!r} is not pinned to a version tag"
    # The official Temporal images, the same server version for server and admin tools.
    services = deployed["services"]
    assert services["temporal"]["image"].startswith("temporalio/auto-setup:")
    assert services["search-attributes"]["image"].startswith("temporalio/admin-tools:")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    server_version = services["temporal"]["image"].split(":")[1]
    assert services["search-attributes"]["image"].split(":")[1].startswith(server_version + "-")
    # The three process roles run one image, built from this repository's Dockerfile.
    app_images = {services[s]["image"] for s in APP_SERVICES}
    assert len(app_images) == 1
    for s in APP_SERVICES:
        assert services[s]["build"]["dockerfile"] == "Dockerfile"
    assert [services[s]["command"] for s in APP_SERVICES] == [["migrate"], ["api"], ["worker"]]


def test_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "temporal", "api"):
        check = services[name].get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name}: no health check"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["temporal"]["healthcheck"]["test"][1:5] == ["temporal", "operator", "cluster", "health"]
    assert services["api"]["healthcheck"]["test"][1:] == ["python", "-m", "launch.serve", "healthcheck"]


def test_start_order_uses_depends_on_conditions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on without conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert spec.get("condition") in ("service_healthy", "service_completed_successfully"), (name, dep)
            if spec["condition"] == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), f"{name} waits on {dep} without a check"

    def condition(service: str, dep: str) -> str:
        return str(services[service]["depends_on"][dep]["condition"])

    assert condition("temporal", "postgres") == "service_healthy"
    assert condition("search-attributes", "temporal") == "service_healthy"
    assert condition("migrate", "postgres") == "service_healthy"
    for role in ("api", "worker"):
        assert condition(role, "migrate") == "service_completed_successfully"
        assert condition(role, "search-attributes") == "service_completed_successfully"
        assert condition(role, "temporal") == "service_healthy"
    for one_shot in ("migrate", "search-attributes"):
        assert services[one_shot]["restart"] == "no"


def test_required_secrets_use_required_interpolation(compose: dict[str, Any]) -> None:
    variables = list(variables_in(compose))
    required = {name for name, op, _ in variables if op == ":?"}
    assert required == REQUIRED_VARS
    for name, op, arg in variables:
        if op == ":?":
            assert name in arg and len(arg) > len(name) + 5, f"{name}: the message must say what to set"
        if SECRET_KEY_RE.search(name):
            assert op == ":?", f"secret {name} must be required with ${{{name}:?message}}, not {op!r}"
    # Leaving any one of them unset stops compose with its message.
    for name in REQUIRED_VARS:
        env = {k: v for k, v in DEPLOY_ENV.items() if k != name}
        with pytest.raises(MissingVariable, match=f"{name} is missing a value: set {name}"):
            interpolate(compose, env)
        with pytest.raises(MissingVariable, match=name):
            interpolate(compose, {**env, name: ""})


def _env_items(document: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    for name, service in document.get("services", {}).items():
        for key, value in environment_of(service).items():
            yield name, key, value


@pytest.mark.parametrize("path", [COMPOSE_FILE, WEBHOOKS_OVERRIDE], ids=lambda p: p.name)
def test_no_literal_secrets(path: Path) -> None:
    document = load_yaml(path)
    for service, key, value in _env_items(document):
        if SECRET_KEY_RE.search(key):
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), f"{service}.{key} holds a literal: {value!r}"
        # A URL with credentials may only carry interpolated ones.
        for m in re.finditer(r"://([^:/@\s]+):([^@\s]+)@", value):
            assert m.group(2).startswith("${") and ":?" in m.group(2), f"{service}.{key}: literal password in URL"
    text = path.read_text()
    assert DEV_SECRET not in text
    assert not re.search(r"(?im)^\s*[\w-]*(password|secret|pwd)[\w-]*\s*:\s*[^$\s#][^\n]*$", text), (
        "a secret-looking key with a literal value"
    )


def test_application_settings_are_valid_production_settings(deployed: dict[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """What compose hands the api/worker/migrate containers passes the production checks."""
    for role in APP_SERVICES:
        env = environment_of(deployed["services"][role])
        assert env["PROGRESSION_ENV"] == "production"
        for key in [k for k in os.environ if k.startswith("PROGRESSION_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.resolved_database_url.startswith("postgresql+psycopg://progression:")
        assert "@postgres:5432/progression" in settings.resolved_database_url
        assert settings.temporal_address == "temporal:7233"
        assert settings.secret_key == DEPLOY_ENV["PROGRESSION_SECRET_KEY"]
    # The same database credentials the PostgreSQL init script gives the `progression` role.
    pg_env = environment_of(deployed["services"]["postgres"])
    assert pg_env["PROGRESSION_DB_PASSWORD"] == DEPLOY_ENV["PROGRESSION_DB_PASSWORD"]
    assert environment_of(deployed["services"]["temporal"])["POSTGRES_PWD"] == DEPLOY_ENV["TEMPORAL_DB_PASSWORD"]


def test_workers_scale_and_share_evidence(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]
    assert worker["deploy"]["replicas"] >= 2
    # Nothing that pins one container: `--scale worker=N` must work.
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    # API (writes evidence) and workers (read it in checks) mount the same volume at the data dir.
    for role in ("api", "worker"):
        assert "progression-data:/data" in services[role]["volumes"]
        assert environment_of(services[role])["PROGRESSION_DATA_DIR"] == "/data"
    assert "progression-data" in compose["volumes"]
    assert environment_of(services["worker"])["PROGRESSION_TASK_QUEUE"] == environment_of(
        services["api"])["PROGRESSION_TASK_QUEUE"]


def test_mounted_helper_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (PROJECT_ROOT / source).exists(), f"{name}: {source} does not exist"
    dyn = compose["services"]["temporal"]["environment"]["DYNAMIC_CONFIG_FILE_PATH"]
    config = load_yaml(PROJECT_ROOT / "deploy" / "temporal" / "dynamicconfig" / Path(dyn).name)
    assert config["limit.maxIDLength"][0]["value"] == 255
    assert "system.forceSearchAttributesCacheRefreshOnRead" not in config  # upstream says dev only


def test_search_attributes_match_the_engine(compose: dict[str, Any]) -> None:
    listed = compose["services"]["search-attributes"]["environment"]["SEARCH_ATTRIBUTES"].split()
    assert dict(pair.split("=", 1) for pair in listed) == SEARCH_ATTRIBUTES
    assert len(listed) == len(SEARCH_ATTRIBUTES)


def test_postgres_init_creates_both_databases_without_literal_passwords() -> None:
    script = (PROJECT_ROOT / "deploy" / "postgres" / "init-databases.sh").read_text()
    for db in ("temporal", "temporal_visibility", "progression"):
        assert f"CREATE DATABASE {db} OWNER" in script
    assert "PASSWORD :'" in script  # psql variables, never a spliced-in string
    assert not re.search(r"PASSWORD\s+'", script)


# --- Dockerfile, at lint level ---------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_base_is_slim_python_311_pinned() -> None:
    instructions = _instructions()
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    froms = [rest.split()[0] for kw, rest in instructions if kw == "FROM"]
    assert froms, "no FROM"
    for ref in froms:
        image = args.get(ref[2:-1], ref) if ref.startswith("${") else ref
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", image), f"base {image!r} not a pinned slim 3.11"


def test_dockerfile_runs_as_non_root_with_the_serve_entry_point() -> None:
    instructions = _instructions()
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final user must not be root"
    last_user = max(i for i, (kw, _) in enumerate(instructions) if kw == "USER")
    entry = max(i for i, (kw, _) in enumerate(instructions) if kw == "ENTRYPOINT")
    assert last_user < entry
    assert json.loads(dict(instructions)["ENTRYPOINT"]) == ["python", "-m", "launch.serve"]
    assert json.loads(dict(instructions)["CMD"]) == ["api"]
    healthcheck = dict(instructions)["HEALTHCHECK"]
    assert '"launch.serve", "healthcheck"' in healthcheck and "--interval=" in healthcheck


def test_dockerfile_installs_runtime_dependencies_only() -> None:
    instructions = _instructions()
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "pip install ." in runs
    assert "[dev]" not in runs and "pytest" not in runs and "apt-get install" not in runs
    copied = {rest.split()[-1].removeprefix("./") for kw, rest in instructions if kw == "COPY"}
    # Everything the processes read at run time is in the image: code, policies, Alembic versions.
    for needed in ("engine", "workflows", "activities", "api", "client", "launch", "migrations", "policies",
                   "alembic.ini"):
        assert needed in copied, f"{needed} not copied into the image"
    env = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert "PROGRESSION_ENV=production" in env and "PROGRESSION_API_HOST=0.0.0.0" in env


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    ignored = set((PROJECT_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".data", ".env", "tests"} <= ignored


# --- launch.serve: the image's entry point ---------------------------------------------------------


def _clean_progression_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("PROGRESSION_")]:
        monkeypatch.delenv(key)


def test_serve_refuses_unsafe_production_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_progression_env(monkeypatch)
    monkeypatch.setenv("PROGRESSION_ENV", "production")
    with pytest.raises(SystemExit) as refused:
        serve.main(["migrate"])
    message = str(refused.value.code)
    assert message.startswith("progression: refusing to start")
    for name in ("PROGRESSION_SECRET_KEY", "PROGRESSION_DATABASE_URL", "PROGRESSION_TEMPORAL_ADDRESS"):
        assert name in message


def test_serve_rejects_an_unknown_role(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve.main(["scheduler"])
    assert "invalid choice: 'scheduler'" in capsys.readouterr().err


def test_serve_migrate_brings_the_database_to_head(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_progression_env(monkeypatch)
    monkeypatch.setenv("PROGRESSION_DATABASE_URL", database_url)
    assert serve.main(["migrate"]) == 0
    engine = create_engine(sync_url(database_url))
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"alembic_version", "users", "audit_events"} <= tables


def test_serve_healthcheck_probes_the_local_api(monkeypatch: pytest.MonkeyPatch) -> None:
    class Health(QuietHandler):
        status = 200

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(self.status if self.path == "/healthz" else 404)
            self.end_headers()

    with http_server(Health) as port:
        _clean_progression_env(monkeypatch)
        monkeypatch.setenv("PROGRESSION_API_HOST", "0.0.0.0")  # as in the image: probe via loopback
        monkeypatch.setenv("PROGRESSION_API_PORT", str(port))
        assert serve.main(["healthcheck"]) == 0
        Health.status = 503
        assert serve.main(["healthcheck"]) == 1
    monkeypatch.setenv("PROGRESSION_API_PORT", str(free_port()))
    assert serve.main(["healthcheck"]) == 1  # nothing listening
