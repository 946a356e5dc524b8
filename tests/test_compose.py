"""docker-compose.yml, checked without a Docker engine: its shape, and that every service command is
one our own argument parsers accept."""

from __future__ import annotations

import re

import yaml

import eval as eval_script
import train as train_script
from tests.conftest import ROOT


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def with_defaults(command: list[str]) -> list[str]:
    """Substitute ${VAR:-default} the way compose does when VAR is unset."""
    return [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", part) for part in command]


def test_services_share_the_runs_volume_and_train_reserves_a_gpu() -> None:
    services = compose()["services"]
    assert set(services) == {"train", "eval", "tensorboard"}
    for service in services.values():
        assert "runs:/runs" in service["volumes"]
        assert service["init"] is True
    (device,) = services["train"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "count" not in device, "compose refuses count together with device_ids"
    assert services["eval"]["environment"] == {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}


def test_service_commands_parse_and_share_one_train_dir() -> None:
    services = compose()["services"]
    train_cmd, eval_cmd = (with_defaults(services[name]["command"]) for name in ("train", "eval"))
    assert train_cmd[:2] == ["python", "train.py"] and eval_cmd[:2] == ["python", "eval.py"]
    train_args, eval_args = train_script.parse_args(train_cmd[2:]), eval_script.parse_args(eval_cmd[2:])
    assert train_args.train_dir == eval_args.train_dir
    assert (ROOT / train_args.config).is_file()
    assert services["tensorboard"]["command"][:3] == ["tensorboard", "--logdir", "/runs"]
