"""Every command in the compose files runs: the services' commands and health checks, started as
processes with the services' environment against one shared folder standing in for the `runs` volume."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.protocol.layout import TrainDir
from shared.protocol.ledger import read_records
from tests.conftest import HANG_GUARD, ROOT, Proc, fetch_json, free_port, wait_until
from tests.test_compose import CPU, VARIABLE

pytestmark = pytest.mark.slow


def as_here(part: str, env: dict[str, str], runs: Path, port: int) -> str:
    """One word of a compose command as it runs here: variables from `env` (else their defaults), the
    volume at `runs`, TensorBoard's fixed port 6006 on a free loopback port instead."""
    part = VARIABLE.sub(lambda m: env.get(m.group(1), m.group(2) or ""), part)
    replacements = {"python": sys.executable, "0.0.0.0": "127.0.0.1", "6006": str(port)}
    part = replacements.get(part, part).replace("localhost:6006", f"localhost:{port}")
    return str(runs) + part[len("/runs") :] if part.startswith("/runs") else part


def test_compose_commands_train_evaluate_serve_and_report_health(tmp_path: Path, start) -> None:
    services: dict[str, Any] = yaml.safe_load((ROOT / CPU).read_text())["services"]
    config = yaml.safe_load((ROOT / "configs" / "digits.yaml").read_text())
    config["train"].update(steps=120, warmup_steps=10)
    config["checkpoint"]["every_steps"] = 40
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(config))
    env, runs, port = {"CONFIG": str(tmp_path / "short.yaml")}, tmp_path / "runs", free_port()
    runs.mkdir()  # what the image prepares for the named volume

    def command(argv: list[str]) -> list[str]:
        return [as_here(part, env, runs, port) for part in argv]

    def run_service(name: str) -> Proc:
        argv = command(services[name]["command"])
        assert argv[0] == sys.executable, f"{name} must run this python, not {argv[0]}"
        return start(*argv[1:], env=services[name].get("environment"))

    def health(name: str, *replace: tuple[str, str]) -> subprocess.CompletedProcess:
        test = command(services[name]["healthcheck"]["test"])
        assert test[0] == "CMD", f"{name}: an exec-form health check"
        for old, new in replace:
            test[test.index(old)] = new
        return subprocess.run(test[1:], cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD, check=False)

    evaluator, trainer, tensorboard = (run_service(name) for name in ("eval", "train", "tensorboard"))
    assert trainer.wait() == 0, trainer.output()
    assert evaluator.wait() == 0, evaluator.output()
    train_dir = TrainDir(runs / "digits")
    assert [r["step"] for r in read_records(train_dir.results)] == [40, 80, 120]

    assert health("train").returncode == 0, health("train").stderr
    stale = health("train", ("300", "0"))  # the heartbeat is older than 0 s: stuck, as far as it knows
    assert stale.returncode == 1 and "unhealthy" in stale.stderr

    wait_until(lambda: health("tensorboard").returncode == 0, 60, "TensorBoard's health check to pass", interval=0.5)
    runs_served = lambda: sorted(fetch_json(f"http://127.0.0.1:{port}/data/runs"))  # noqa: E731
    # Healthy means serving; TensorBoard loads the runs in the background, so wait for them (bounded).
    wait_until(lambda: runs_served() == ["digits/eval", "digits/train"], 60, "TensorBoard to load both runs", 0.5)
    tensorboard.signal(signal.SIGTERM)
    assert tensorboard.wait() == 0, tensorboard.output()
    assert health("tensorboard").returncode == 1
