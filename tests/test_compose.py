"""The compose files, checked without a Docker engine by real tools: the Compose Specification's JSON
schema (vendored in tests/schemas) through jsonschema, and Debian's docker-compose, whose `config`
resolves `extends`, overrides and variables exactly as it would before starting containers."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

import eval as eval_script
import launch
import train as train_script
from tests.conftest import ROOT, system_tool

CPU, GPU, EVAL_GPU = "compose.cpu.yml", "docker-compose.yml", "compose.eval-gpu.yml"
COMPOSE_FILES = (CPU, GPU, EVAL_GPU)
# The three ways to run the stack, as the README gives them: the files of each, in `-f` order.
VARIANTS = {"cpu-only": [CPU], "default": [GPU], "eval-on-a-gpu": [GPU, EVAL_GPU]}
VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture(scope="module")
def schema_validator() -> Draft202012Validator:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_each_compose_file_matches_the_compose_spec_schema(name: str, schema_validator: Draft202012Validator) -> None:
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in schema_validator.iter_errors(load(name))]
    assert not errors, f"{name} breaks the Compose Specification:\n" + "\n".join(errors)


@pytest.mark.parametrize(
    ("service", "key", "value"), [("train", "gpu_count", 1), ("eval", "command", {"python": "eval.py"})]
)
def test_the_schema_rejects_what_compose_would(
    service: str, key: str, value: Any, schema_validator: Draft202012Validator
) -> None:
    """The vendored schema really constrains services (so the test above can fail)."""
    broken = load(CPU)
    broken["services"][service][key] = value
    errors = list(schema_validator.iter_errors(broken))
    assert errors and all(list(e.absolute_path)[:2] == ["services", service] for e in errors), errors


def docker_compose() -> str:
    return system_tool("docker-compose")  # Debian's: validates the files without a Docker engine


def resolve(files: list[str], env: dict[str, str] | None = None, env_file: Path | None = None) -> dict[str, Any]:
    """`docker-compose config` of these files: extends, overrides and ${VARIABLES} resolved, or a failure."""
    clean = {k: v for k, v in os.environ.items() if k not in variables()}  # only the defaults, or `env`
    args = [docker_compose(), "--project-directory", str(ROOT)]
    if env_file is not None:
        args += ["--env-file", str(env_file)]
    for name in files:
        args += ["-f", str(ROOT / name)]
    done = subprocess.run([*args, "config"], capture_output=True, text=True, env={**clean, **(env or {})}, check=False)
    assert done.returncode == 0, f"docker-compose config rejected {files}:\n{done.stderr}"
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="module")
def no_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty env file, so a developer's own .env cannot change what the tests see."""
    path = tmp_path_factory.mktemp("env") / "empty.env"
    path.write_text("")
    return path


@pytest.mark.parametrize("variant", VARIANTS)
def test_docker_compose_accepts_every_variant(variant: str, no_env_file: Path) -> None:
    args = [docker_compose(), "--env-file", str(no_env_file)]
    for name in VARIANTS[variant]:
        args += ["-f", str(ROOT / name)]
    done = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def assert_runs_anywhere_the_same_way(services: dict[str, Any]) -> None:
    """What every variant shares: one image, the runs volume, tini, exec-form commands, health checks."""
    assert set(services) == {"train", "eval", "tensorboard"}
    for name, service in services.items():
        assert service["image"] == "trainval:latest", name
        assert "runs:/runs:rw" in service["volumes"], name
        assert service["init"] is True, f"{name}: PID 1 must forward SIGTERM (init: true)"
        assert isinstance(service["command"], list), f"{name}: exec form, so SIGTERM reaches Python"
        for device in gpu_devices(service):
            assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
            assert "count" not in device, f"{name}: compose refuses count together with device_ids"
    assert services["train"]["stop_grace_period"] == "120s"
    assert services["train"]["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "shared.runtime.health"]
    assert services["tensorboard"]["healthcheck"]["test"][-1] == "http://localhost:6006/data/runs"
    assert services["tensorboard"]["ports"] == [{"published": 6006, "target": 6006}]


def test_default_trains_on_gpu_0_and_evaluates_on_the_cpu(no_env_file: Path) -> None:
    services = resolve(VARIANTS["default"], env_file=no_env_file)["services"]
    assert_runs_anywhere_the_same_way(services)
    assert [d["device_ids"] for d in gpu_devices(services["train"])] == [["0"]]
    assert not gpu_devices(services["eval"]) and not gpu_devices(services["tensorboard"])
    assert services["eval"]["environment"] == {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}


def test_train_gpu_picks_the_trainers_gpu(no_env_file: Path) -> None:
    services = resolve(VARIANTS["default"], {"TRAIN_GPU": "3"}, env_file=no_env_file)["services"]
    assert [d["device_ids"] for d in gpu_devices(services["train"])] == [["3"]]


def test_cpu_only_variant_reserves_no_gpu(no_env_file: Path) -> None:
    services = resolve(VARIANTS["cpu-only"], env_file=no_env_file)["services"]
    assert_runs_anywhere_the_same_way(services)
    assert not any(gpu_devices(s) for s in services.values())


def test_eval_on_a_second_gpu_sees_it_as_cuda_0(no_env_file: Path) -> None:
    services = resolve(VARIANTS["eval-on-a-gpu"], {"EVAL_GPU": "2"}, env_file=no_env_file)["services"]
    assert_runs_anywhere_the_same_way(services)
    assert [d["device_ids"] for d in gpu_devices(services["eval"])] == [["2"]]
    assert [d["device_ids"] for d in gpu_devices(services["train"])] == [["0"]]
    # "void" would hide the reserved GPU from the NVIDIA runtime; inside the container it is index 0.
    assert services["eval"]["environment"] == {"CUDA_VISIBLE_DEVICES": "0", "NVIDIA_VISIBLE_DEVICES": "2"}


def variables() -> dict[str, set[str]]:
    """Every ${VARIABLE} the compose files use, with the defaults they give it."""
    found: dict[str, set[str]] = {}
    for name in COMPOSE_FILES:
        for variable, default in VARIABLE.findall((ROOT / name).read_text()):
            found.setdefault(variable, set()).add(default)
    return found


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_env_example_lists_every_variable_with_the_default_the_files_use() -> None:
    example, used = env_example(), variables()
    assert set(used) == set(example) - {"COMPOSE_PROJECT_NAME"}
    for variable, defaults in used.items():
        assert defaults == {example[variable]}, f"{variable}: the files default to {defaults}, .env.example says"


def test_env_example_as_env_file_changes_nothing(no_env_file: Path) -> None:
    for files in VARIANTS.values():
        assert resolve(files, env_file=ROOT / ".env.example") == resolve(files, env_file=no_env_file)


def with_defaults(command: list[str]) -> list[str]:
    """Substitute ${VAR:-default} the way compose does when VAR is unset."""
    return [VARIABLE.sub(lambda m: m.group(2) or "", part) for part in command]


def test_service_commands_parse_and_share_one_train_dir() -> None:
    services = load(CPU)["services"]
    train_cmd, eval_cmd = (with_defaults(services[name]["command"]) for name in ("train", "eval"))
    assert train_cmd[:2] == ["python", "train.py"] and eval_cmd[:2] == ["python", "eval.py"]
    train_args, eval_args = train_script.parse_args(train_cmd[2:]), eval_script.parse_args(eval_cmd[2:])
    assert train_args.train_dir == eval_args.train_dir == "/runs/digits"
    assert (ROOT / train_args.config).is_file()
    assert services["tensorboard"]["command"][:5] == ["python", "-m", "tensorboard.main", "--logdir", "/runs"]


def test_launcher_runs_the_compose_commands() -> None:
    """launch.py and compose start the same three commands; only paths and TensorBoard's address and scope
    (one train_dir rather than the whole volume) differ."""
    args = launch.parse_args(["--config", "configs/digits.yaml", "--train-dir", "/runs/digits"])
    here = {"python": launch.sys.executable, "train.py": str(ROOT / "train.py"), "eval.py": str(ROOT / "eval.py")}
    compose = load(CPU)["services"]
    for service in launch.services(args, args.train_dir):
        expected = [here.get(part, part) for part in with_defaults(compose[service.name]["command"])]
        if service.name == "tensorboard":  # a container must listen on all addresses; one run, not the volume
            expected[expected.index("0.0.0.0")], expected[expected.index("/runs")] = "localhost", "/runs/digits"
        assert service.argv == expected, service.name
        assert service.env == compose[service.name].get("environment", {}), service.name


def test_image_runs_as_a_non_root_user_and_holds_what_the_commands_need() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the containers must not run as root"
    copied = " ".join(re.findall(r"^COPY\s+(.+)$", dockerfile, flags=re.MULTILINE))
    for needed in ("shared", "train.py", "eval.py", "configs"):
        assert needed in copied.split(), needed


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_scales_to_several_replicas(variant: str, no_env_file: Path) -> None:
    """`docker compose up --scale eval=N`: nothing in the eval service may exist once per host or project
    (a container name, a published port); each replica has its own hostname, which its claims carry."""
    service = resolve(VARIANTS[variant], env_file=no_env_file)["services"]["eval"]
    for key in ("container_name", "ports", "hostname", "network_mode", "pid"):
        assert key not in service, f"{variant}: eval's {key} would clash between replicas"


def test_launcher_evaluators_are_replicas_of_the_compose_eval_service() -> None:
    """launch.py --evaluators N: N copies of compose's eval command, as --scale eval=N starts."""
    args = [launch.parse_args(["--train-dir", "/runs/digits", "--evaluators", n]) for n in ("1", "3")]
    one, three = (launch.services(a, a.train_dir) for a in args)
    single = next(s for s in one if s.name == "eval")
    replicas = [s for s in three if s.name.startswith("eval")]
    assert [s.name for s in replicas] == ["eval-0", "eval-1", "eval-2"]
    assert all((s.argv, s.env) == (single.argv, single.env) for s in replicas)
