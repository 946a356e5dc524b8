"""shared.config: loading, --set overrides, every kind of bad input, identity checks, and the CLIs' exit 2."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from shared import config as cfg
from shared.config import ConfigError
from shared.tasks.loading import load_config, resolve_config
from tests.conftest import HANG_GUARD

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "configs" / "digits.yaml"


def test_digits_yaml_loads_with_its_values() -> None:
    """The shipped config resolves to typed sections holding the file's values."""
    config = load_config(DIGITS)
    assert config.task == "digits"
    assert config.train.steps == 500
    assert config.train.lr == pytest.approx(0.003)
    assert config.model.channels == 32
    assert config.data.val_fraction == pytest.approx(0.2)
    assert config.checkpoint.max_to_keep == 5
    assert (config.eval.best_metric, config.eval.best_mode) == ("accuracy", "max")
    # Keys the file leaves out take the dataclass defaults.
    assert config.train.momentum == cfg.TrainConfig().momentum


@pytest.mark.parametrize(
    ("item", "key", "expected"),
    [
        ("train.steps=200", "steps", 200),
        ("train.lr=0.5", "lr", 0.5),
        ("train.flag=true", "flag", True),
        ("train.flag=off", "flag", False),
        ("train.optimizer=sgd", "optimizer", "sgd"),
        ("train.name='123'", "name", "123"),
        ("train.name=", "name", ""),
    ],
)
def test_override_values_are_parsed_as_yaml(item: str, key: str, expected: object) -> None:
    """--set values become YAML scalars of the right Python type, not strings."""
    raw = cfg.apply_overrides({}, [item])
    value = raw["train"][key]
    assert value == expected
    assert type(value) is type(expected)


def test_overrides_replace_nested_values_without_touching_the_input() -> None:
    """Overrides lay over the raw mapping (later ones win) and leave the caller's dict unchanged."""
    raw = {"train": {"steps": 10, "lr": 0.1}, "seed": 1}
    out = cfg.apply_overrides(raw, ["train.steps=20", "train.steps=30", "eval.batch_size=8", "seed=4"])
    assert out == {"train": {"steps": 30, "lr": 0.1}, "seed": 4, "eval": {"batch_size": 8}}
    assert raw == {"train": {"steps": 10, "lr": 0.1}, "seed": 1}


def test_overrides_resolve_to_typed_config() -> None:
    """Overrides reach the typed Config; an integer given for a float field becomes a float."""
    config = load_config(DIGITS, ["train.steps=200", "train.lr=1", "train.optimizer=sgd", "model.channels=8"])
    assert config.train.steps == 200
    assert config.train.lr == 1.0
    assert isinstance(config.train.lr, float)
    assert config.train.optimizer == "sgd"
    assert config.model.channels == 8


def test_override_accepts_scientific_notation() -> None:
    """The usual way to write a learning rate is accepted as a float."""
    assert load_config(DIGITS, ["train.lr=1e-3"]).train.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        pytest.param(["trian.lr=0.1"], ["'trian'", "did you mean train", "allowed keys"], id="unknown-top-level"),
        pytest.param(["train.lrr=0.1"], ["'train.lrr'", "did you mean train.lr?", "momentum"], id="unknown-nested"),
        pytest.param(["train.steps=abc"], ["train.steps", "an integer", "'abc'"], id="str-for-int"),
        pytest.param(["train.steps=true"], ["train.steps", "an integer", "True"], id="bool-for-int"),
        pytest.param(["train.steps=1.5"], ["train.steps", "an integer", "1.5"], id="float-for-int"),
        pytest.param(["train.lr=fast"], ["train.lr", "a number", "'fast'"], id="str-for-float"),
        pytest.param(["train.lr=true"], ["train.lr", "a number", "True"], id="bool-for-float"),
        pytest.param(["train=5"], ["train", "a section"], id="scalar-for-section"),
        pytest.param(["train.lr=-0.1"], ["train.lr", "must be > 0", "-0.1"], id="negative-lr"),
        pytest.param(["train.lr=0"], ["train.lr", "must be > 0"], id="zero-lr"),
        pytest.param(["train.momentum=1.5"], ["train.momentum", "between 0 and 1", "1.5"], id="momentum-above-1"),
        pytest.param(["train.steps=0"], ["train.steps", ">= 1"], id="zero-steps"),
        pytest.param(["model.dropout=2"], ["model.dropout", "between 0 and 1"], id="task-section-range"),
        pytest.param(
            ["train.optimizer=foo"], ["train.optimizer", "'sgd'", "'adamw'", "'foo'"], id="literal-not-a-choice"
        ),
        pytest.param(  # eval.best_mode is derived now; an old file's contradicting value is still refused
            ["eval.best_metric=loss", "eval.best_mode=max"], ["eval.best_mode", "best_mode=min"], id="loss-with-max"
        ),
        pytest.param(
            ["eval.best_metric=accuracy", "eval.best_mode=min"], ["eval.best_mode", "best_mode=max"], id="acc-with-min"
        ),
        pytest.param(  # the metric it would go with is the task's now, unknown to the schema
            ["eval.best_metric=null", "eval.best_mode=max"],
            ["eval.best_mode", "drop it", "set eval.best_metric"],
            id="mode-without-metric",
        ),
        pytest.param(
            ["train.on_plateau.metric=accuracy", "train.on_plateau.mode=min"],
            ["train.on_plateau.mode", "accuracy improves upwards", "set train.on_plateau.mode=max"],
            id="plateau-mode-against-metric",
        ),
        pytest.param(
            ["train.early_stop.metric=loss", "train.early_stop.mode=max"],
            ["train.early_stop.mode", "set train.early_stop.mode=min"],
            id="stop-max",
        ),
        pytest.param(["train.on_plateau.factor=1"], ["train.on_plateau.factor", "exclusive"], id="plateau-factor-1"),
        pytest.param(
            ["train.on_plateau.patience=2", "train.on_plateau.min_lr=0.01"],
            ["train.on_plateau.min_lr", "below train.lr (0.003)"],
            id="plateau-min-lr-above-lr",
        ),
        pytest.param(["train.max_eval_lag=-1"], ["train.max_eval_lag", "or null (off)"], id="negative-eval-lag"),
        pytest.param(
            ["train.warmup_steps=2000"], ["train.warmup_steps", "<= train.steps (500)", "2000"], id="warmup-gt-steps"
        ),
        pytest.param(["train.lr"], ["'train.lr'", "expected section.key=value"], id="set-without-equals"),
        pytest.param(["=3"], ["'=3'", "expected section.key=value"], id="set-without-key"),
        pytest.param(["task.name=x"], ["task is not a section"], id="set-into-non-section"),
        pytest.param(["task=nosuch"], ["task", "'nosuch'", "built-in task", "digits"], id="unknown-task-name"),
        pytest.param(
            ["task=no_such_pkg_zz.tasks:MyTask"],
            ["task", "cannot import module 'no_such_pkg_zz.tasks'", "PYTHONPATH"],
            id="task-missing-module",
        ),
        pytest.param(["task=shared.config:Config"], ["task", "not a subclass"], id="task-not-a-task"),
        pytest.param(
            ["task=tests.custom_task:BlobTask"],
            ["task: no BlobTask in tests.custom_task", "did you mean tests.custom_task:BlobsTask?"],
            id="task-class-typo",
        ),
        pytest.param(
            ["task=tests.custom_task:Nope"], ["no Nope in tests.custom_task", "BlobsTask"], id="task-no-such-class"
        ),
        pytest.param(
            ["task=tests.broken_tasks:UnfinishedTask"],
            ["task: tests.broken_tasks:UnfinishedTask", "abstract methods", "build_model, eval_data, train_data"],
            id="task-abstract-methods",
        ),
        pytest.param(
            ["task=tests.broken_tasks:DataclassSectionsTask"],
            ["DataclassSectionsTask.ModelConfig must extend shared.config.Section", "docs/config.md"],
            id="task-dataclass-section",
        ),
        pytest.param(
            ["train.on_plateau.patience=2", "train.on_plateau.split=train"],
            ["train.on_plateau.split", "'train' is not one of eval.splits ['val']"],
            id="plateau-split-not-evaluated",
        ),
        pytest.param(
            ["train.early_stop.patience=2", "train.early_stop.split=test"],
            ["train.early_stop.split", "'test' is not one of eval.splits"],
            id="stop-split-not-evaluated",
        ),
        pytest.param(["train.early_stop.split=vall"], ["train.early_stop.split", "'vall'"], id="split-typo"),
        pytest.param(["seed=18446744073709551616"], ["seed", "<= 4294967295"], id="seed-beyond-64-bits"),
        pytest.param(["data.split_seed=-1"], ["data.split_seed", ">= 0"], id="negative-split-seed"),
        pytest.param(["train.lr=.inf"], ["train.lr", "finite"], id="infinite-lr"),
        pytest.param(["checkpoint.every_secs=1e300"], ["checkpoint.every_secs", "<= 2592000"], id="huge-duration"),
    ],
)
def test_bad_overrides_raise_config_error_naming_key(overrides: list[str], fragments: list[str]) -> None:
    """Each bad override raises ConfigError whose message names the key and what is allowed."""
    with pytest.raises(ConfigError) as info:
        load_config(DIGITS, overrides)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message  # the CLIs print it as one line


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param("train: {lr: 0.1\n", ["is not valid YAML"], id="unclosed-flow-mapping"),
        pytest.param("train:\n\tlr: 0.1\n", ["is not valid YAML"], id="tab-indent"),
        pytest.param("- train\n- eval\n", ["must hold a mapping of sections", "list"], id="list"),
        pytest.param("just words\n", ["must hold a mapping of sections", "str"], id="scalar"),
    ],
)
def test_bad_yaml_files_raise_config_error(tmp_path: Path, text: str, fragments: list[str]) -> None:
    """A config file that is not a YAML mapping is refused with the file's name and the reason on one line."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_missing_config_file_raises_config_error(tmp_path: Path) -> None:
    """A missing --config file is a ConfigError that names the path and the option."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "--config" in str(info.value)


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    """An empty file is an empty mapping: every section takes its defaults."""
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == resolve_config({})


def test_saved_config_loads_back_equal(tmp_path: Path) -> None:
    """config.yaml written by save() resolves to the same Config (eval.py rebuilds the model from it)."""
    config = load_config(DIGITS, ["train.steps=420", "model.hidden=16"])
    cfg.save(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize(
    ("overrides", "listed"),
    [
        pytest.param(["model.channels=16"], ["model.channels: 32 -> 16"], id="model"),
        pytest.param(["data.batch_size=32"], ["data.batch_size: 64 -> 32"], id="data"),
        pytest.param(["seed=1"], ["seed: 0 -> 1"], id="seed-picks-the-splits"),
        pytest.param(["data.folds=5", "data.fold=1"], ["data.folds: 0 -> 5", "data.fold: 0 -> 1"], id="folds"),
        pytest.param(
            ["model.hidden=64", "data.split_seed=3", "train.steps=3000"],
            ["model.hidden: 128 -> 64", "data.split_seed: 0 -> 3"],
            id="several",
        ),
    ],
)
def test_identity_change_is_refused_listing_keys(overrides: list[str], listed: list[str]) -> None:
    """A changed model or data section is refused, and the message lists every differing identity key."""
    saved = load_config(DIGITS)
    with pytest.raises(ConfigError) as info:
        cfg.check_same_identity(saved, load_config(DIGITS, overrides), "the config")
    message = str(info.value)
    for fragment in listed:
        assert fragment in message
    assert "train.steps" not in message  # only the identity keys are listed


def test_task_change_is_refused() -> None:
    """A different task is an identity change too."""
    saved = load_config(DIGITS)
    changed = saved.model_copy(update={"task": "mypkg.tasks:Other"})
    with pytest.raises(ConfigError, match=r"task: 'digits' -> 'mypkg.tasks:Other'"):
        cfg.check_same_identity(saved, changed, "the config")


def test_non_identity_changes_are_returned_not_refused() -> None:
    """More steps (or other train/eval changes) are allowed on resume and reported back as key -> (old, new)."""
    saved = load_config(DIGITS)
    new = load_config(DIGITS, ["train.steps=3000", "eval.batch_size=128", "data.num_workers=2"])
    changed = cfg.check_same_identity(saved, new, "the config")
    assert changed == {"train.steps": (500, 3000), "eval.batch_size": (512, 128), "data.num_workers": (0, 2)}
    assert cfg.check_same_identity(saved, load_config(DIGITS), "the config") == {}


def test_eval_may_change_the_eval_section_only() -> None:
    """eval.py rebuilds the model and data from config.yaml: a train.* change there would be ignored."""
    saved = load_config(DIGITS)
    with pytest.raises(ConfigError) as info:
        cfg.check_eval_only(saved, load_config(DIGITS, ["train.lr=0.1", "eval.batch_size=8"]), "--config/--set")
    assert "may change the eval section only (train.lr: 0.003 -> 0.1)" in str(info.value)
    with pytest.raises(ConfigError, match=r"seed: 0 -> 2"):
        cfg.check_eval_only(saved, load_config(DIGITS, ["seed=2"]), "--config/--set")
    changed = cfg.check_eval_only(saved, load_config(DIGITS, ["eval.batch_size=8"]), "--config/--set")
    assert changed == {"eval.batch_size": (512, 8)}


def test_best_mode_of_older_files_is_accepted_when_it_agrees() -> None:
    """eval.best_mode could only be what eval.best_metric implies; older files that hold it still load."""
    config = load_config(DIGITS, ["eval.best_metric=loss", "eval.best_mode=min"])
    assert config.eval.best_mode == "min"
    assert "best_mode" not in config.to_dict()["eval"]


FIXTURES = sorted((REPO / "tests" / "fixtures" / "saved-configs").glob("*.yaml"))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_configs_saved_by_earlier_versions_still_load(tmp_path: Path, path: Path) -> None:
    """config.yaml files that main wrote before the move to pydantic (commit be9a29d) load with the same
    values (options added since take their defaults); only eval.best_mode, derived from eval.best_metric
    now, is no longer written."""
    config = load_config(path)
    old, new = cfg.flatten(cfg.read_yaml(path)), cfg.flatten(config)
    assert old.pop("eval.best_mode") == config.eval.best_mode
    assert {key: new[key] for key in old} == old
    cfg.save(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert "best_mode" not in (tmp_path / "config.yaml").read_text()


def test_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  lr: 0.1  # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"config file {path} is not UTF-8 text (byte 0xe9 at offset 23); save it as UTF-8"


def _run_cli(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD, check=False
    )


def test_train_cli_bad_set_exits_2_with_one_line(tmp_path: Path) -> None:
    """train.py turns a bad --set into exit code 2 and one `train.py: error:` line naming the key, no traceback."""
    result = _run_cli(
        "train.py", "--config", str(DIGITS), "--train-dir", str(tmp_path / "run"), "--set", "train.lrr=0.1"
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("train.py: error: ")
    assert "train.lrr" in lines[0]
    assert "did you mean train.lr?" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_eval_cli_missing_train_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    """eval.py ad hoc refuses a --train-dir that does not exist with exit code 2 and one line naming it, no
    traceback (the daemon waits for train.py to create it instead: tests/test_end_to_end.py)."""
    missing = tmp_path / "no-such-parent" / "run"
    result = _run_cli("eval.py", "--train-dir", str(missing), "--device", "cpu", "--checkpoint", "latest")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("eval.py: error: --train-dir ")
    assert str(missing) in lines[0]
    assert "does not exist" in lines[0]
    assert not missing.parent.exists()


def test_eval_help_suggests_only_eval_overrides() -> None:
    """eval.py takes eval.* only, so its --help must not suggest --set train.lr=... ."""
    import eval as eval_script  # the repository's eval.py

    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
        eval_script.parse_args(["--help"])
    text = " ".join(out.getvalue().split())  # argparse wraps lines
    assert "--set eval.batch_size=256" in text
    assert "--set train." not in text
