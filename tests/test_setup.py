"""Set-up: where `make` takes torch from (PyPI's CUDA build on a GPU machine, PyTorch's CPU index elsewhere,
or what TORCH_INDEX says), read from `make -n` with a fake nvidia-smi on PATH, and the Dockerfile choosing
through the same script; `make demo` installs what running needs, `make test` the dev tools too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
FAKE_SMI = {
    "gpu": 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"',
    # What nvidia-smi says on a machine whose driver is gone or never loaded.
    "no-driver": 'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9',
}

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make_plan(tmp_path: Path, target: str, nvidia_smi: str | None = None, **variables: str) -> list[str]:
    """The commands `make target` would run with a fresh venv (`{venv}` in target), nvidia-smi faked as given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX", "TORCH", "MAKEFLAGS")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    overrides = [f"{name}={value}" for name, value in variables.items()]
    plan = subprocess.run(
        ["make", "-n", target.format(venv=venv), f"VENV={venv}", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return plan.splitlines()


def torch_install(tmp_path: Path, nvidia_smi: str | None, **variables: str) -> str:
    """The pip command `make` would run to install torch into a fresh venv."""
    plan = make_plan(tmp_path, "{venv}/.installed", nvidia_smi, **variables)
    (line,) = [line for line in plan if "pip install" in line and " -e " not in line]
    return line


def test_the_demo_installs_what_running_needs_and_the_tests_add_the_dev_tools(tmp_path: Path) -> None:
    projects = {
        target: [line.split(" -e ", 1)[1] for line in make_plan(tmp_path, target) if " -e " in line]
        for target in ("demo", "test")
    }
    assert projects == {"demo": ["."], "test": [".", "'.[dev]'"]}, projects


def index_of(pip_command: str) -> str | None:
    match = re.search(r"--index-url (\S+)", pip_command)
    return match and match.group(1)


def test_a_gpu_machine_gets_pypis_cuda_build(tmp_path: Path) -> None:
    line = torch_install(tmp_path, FAKE_SMI["gpu"])
    assert index_of(line) is None and '"torch==2.13.0"' in line, line


def test_a_machine_without_a_working_driver_gets_the_cpu_wheel(tmp_path: Path) -> None:
    assert index_of(torch_install(tmp_path, FAKE_SMI["no-driver"])) == CPU_INDEX


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a real nvidia-smi on PATH")
def test_a_machine_without_nvidia_smi_gets_the_cpu_wheel(tmp_path: Path) -> None:
    assert index_of(torch_install(tmp_path, None)) == CPU_INDEX


def test_torch_index_overrides_the_choice(tmp_path: Path) -> None:
    # Empty: pip's own index, which is how .ci/run keeps this machine's local CPU wheel.
    assert index_of(torch_install(tmp_path, None, TORCH_INDEX="")) is None
    assert index_of(torch_install(tmp_path, FAKE_SMI["gpu"], TORCH_INDEX=CPU_INDEX)) == CPU_INDEX
    line = torch_install(tmp_path, FAKE_SMI["no-driver"], TORCH_INDEX="https://mirror.example/simple", TORCH="torch")
    assert index_of(line) == "https://mirror.example/simple" and '"torch"' in line


def test_shared_is_a_regular_package() -> None:
    """Not a namespace package, which would merge silently with any other installed `shared`."""
    import shared

    assert shared.__file__ == str(ROOT / "shared" / "__init__.py") and shared.__doc__


def test_ci_keeps_pips_own_index_and_the_dockerfile_chooses_through_the_same_script() -> None:
    assert re.search(r"^TORCH_INDEX= make test", (ROOT / ".ci/run").read_text(), flags=re.MULTILINE)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY scripts/torch-index" in dockerfile
    assert re.search(r'^RUN index="\$\(TORCH_INDEX="\$TORCH_INDEX" scripts/torch-index\)"', dockerfile, re.MULTILINE)
    assert re.search(r"^ARG TORCH_INDEX=auto$", dockerfile, flags=re.MULTILINE)
