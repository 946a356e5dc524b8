"""Every shell command in README.md and docs/*.md is run by a test, parsed here, or marked as not runnable on
a CPU-only machine, so a command in the docs cannot drift from the code (docs/development.md, "Commands in
the docs", has the convention):

- run: its ```bash block is preceded by `<!-- run by tests/test_x.py -->`, and that test reads the page;
- parsed: its argv goes through the program's own parser (train.py's, torchrun's, TensorBoard's, pytest's,
  MLflow's...), and the files it names exist (a config, a compose file, a Makefile target, a pip extra);
- marked: a full-line `# needs WHAT: why` comment above it in its block. Marked commands are parsed too
  where a parser exists; the mark only excuses a command no parser here knows.

A command is a line (joined over trailing backslashes) of a fenced bash/sh/shell/console block, or an
inline code span that starts with `.venv/bin/` or `make ` and has an argument. Every fence must name its
language, so a block of commands cannot hide as plain text.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from shared.protocol.layout import TrainDir
from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
RUN_BY = re.compile(r"<!-- run by (tests/[\w/]+\.py) -->")
NEEDS = re.compile(r"# needs (?P<what>[^:]+): (?P<why>\S.*)")
INLINE = re.compile(r"`((?:\.venv/bin/|make )[^`]*)`")
ENV = re.compile(r"[A-Z_][A-Z0-9_]*=")
VENV = ".venv/bin/"


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    text: str
    run_by: str | None = None
    needs: str | None = None  # "WHAT: why" of its `# needs` mark

    def __str__(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}: {self.text}"


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def commands(page: Path) -> Iterator[Command]:
    text = page.read_text()
    for fence in FENCE.finditer(text):
        if fence.group(1) not in SHELL:
            continue
        before = text[: fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        run_by = RUN_BY.fullmatch(before.strip())
        needs, first = None, line_of(text, fence.start(2))
        lines = fence.group(2).splitlines()
        index = 0
        while index < len(lines):
            start, line = index, lines[index]
            while line.endswith("\\") and index + 1 < len(lines):
                index += 1
                line = line[:-1] + " " + lines[index].strip()
            index += 1
            if line.lstrip().startswith("#"):
                mark = NEEDS.fullmatch(line.strip())
                needs = f"{mark['what']}: {mark['why']}" if mark else None
            elif line.strip():
                yield Command(page, first + start, line.strip(), run_by and run_by.group(1), needs)
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # fences out, line numbers kept
    for span in INLINE.finditer(prose):
        if " " in span.group(1).strip():  # a program named alone is not a command
            yield Command(page, line_of(prose, span.start()), " ".join(span.group(1).split()))


ALL = [command for page in PAGES for command in commands(page)]


# Parsers: each takes the argv after the program (and the command, for what it names) and fails with a
# message saying what is wrong; an argparse error's own message is kept.


class ParseError(AssertionError):
    pass


@contextlib.contextmanager
def argparse_errors(what: str) -> Iterator[None]:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            yield
    except SystemExit as exit:
        if exit.code:
            lines = stderr.getvalue().strip().splitlines()
            raise ParseError(f"{what}: {lines[-1] if lines else f'exit code {exit.code}'}") from None


@cache
def script(path: str) -> ModuleType:
    """train.py, eval.py or launch.py as a module (their `main` does not run)."""
    spec = importlib.util.spec_from_file_location(f"doc_{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def written_on(page: Path) -> set[str]:
    """Files the page itself writes out: fenced blocks whose first line is `# name.ext`."""
    return {m.group(1) for m in re.finditer(r"^```\w+\n# ([\w.-]+\.\w+)\n", page.read_text(), re.MULTILINE)}


def parse_with(module: ModuleType, what: str, argv: list[str], command: Command) -> None:
    if not hasattr(module, "parse_args"):
        assert not argv, f"{what} takes no arguments here: give it a parse_args(argv) to check them against"
        return
    with argparse_errors(what):
        args = module.parse_args(argv)
    config = getattr(args, "config", None)
    if config and not (ROOT / config).is_file():
        assert config in written_on(command.page), f"--config {config}: no such file, nor one the page writes out"


def python(argv: list[str], command: Command) -> None:
    if argv[:2] == ["-m", "pytest"]:
        return pytest_args(argv[2:])
    if argv[:1] == ["-m"]:
        assert importlib.util.find_spec(argv[1]), f"no module {argv[1]}"
        return parse_with(importlib.import_module(argv[1]), argv[1], argv[2:], command)
    assert (ROOT / argv[0]).is_file() and argv[0].endswith(".py"), f"{argv[0]}: not a script of the checkout"
    parse_with(script(argv[0]), argv[0], argv[1:], command)


def pytest_args(argv: list[str]) -> None:
    """pytest's own parser, with the plugins installed, through its public entry point: `pytest.main` with
    `-VV` parses the whole command line (a usage error exits 4 with its message) and then only prints the
    versions, running and configuring nothing."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = pytest.main(["-VV", *argv])
    if code == pytest.ExitCode.USAGE_ERROR:
        errors = [line.split("error: ", 1)[1] for line in stderr.getvalue().splitlines() if "error: " in line]
        raise ParseError(f"pytest: {errors[-1] if errors else stderr.getvalue().strip()}")
    assert code == pytest.ExitCode.OK, f"pytest -VV {shlex.join(argv)}: exit code {code}"
    for arg in argv:
        if arg.startswith("tests/"):
            assert (ROOT / arg.split("::")[0]).exists(), f"no {arg}"


def torchrun(argv: list[str], command: Command) -> None:
    from torch.distributed.run import get_args_parser

    with argparse_errors("torchrun"):
        args = get_args_parser().parse_args(argv)
    python([args.training_script, *args.training_script_args], command)


def tensorboard(argv: list[str], command: Command) -> None:
    from tensorboard import program

    with argparse_errors("tensorboard"):
        program.TensorBoard().configure(argv=["tensorboard", *argv])


def mlflow(argv: list[str], command: Command) -> None:
    import click
    from mlflow.cli import cli

    assert argv and argv[0] in cli.commands, f"mlflow has no command {argv[:1]}"
    try:
        cli.commands[argv[0]].make_context(argv[0], argv[1:])
    except click.ClickException as err:
        raise ParseError(f"mlflow {argv[0]}: {err.format_message()}") from None


def pip(argv: list[str], command: Command) -> None:
    """`pip install -e '.[extra,...]'`: the checkout's own extras."""
    parser = argparse.ArgumentParser(prog="pip install")
    parser.add_argument("verb", choices=["install"])
    parser.add_argument("-e", "--editable", required=True)
    with argparse_errors("pip"):
        args = parser.parse_args(argv)
    path, _, extras = args.editable.partition("[")
    assert path == ".", f"pip install -e {args.editable}: install the checkout itself (.)"
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]\n", 1)[1].split("\n[", 1)[0]
    known = re.findall(r"^([\w-]+) = \[", section, re.MULTILINE)  # tomllib is Python 3.11's, and 3.10 is supported
    for extra in filter(None, extras.rstrip("]").split(",")):
        assert extra in known, f"pyproject.toml has no extra {extra!r}; it has {', '.join(known)}"


def make(argv: list[str], command: Command, env: dict[str, str] | None = None) -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w.-]+):(?!=)", makefile, re.MULTILINE))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:]?=", makefile, re.MULTILINE))
    for arg in argv:
        name = arg.split("=", 1)[0] if ENV.match(arg) else None
        if name:
            assert name in variables, f"make: the Makefile sets no variable {name}"
        else:
            assert arg in targets, f"make: no target {arg!r}; the Makefile has {', '.join(sorted(targets))}"
    for name in env or {}:
        assert name in variables, f"{name}=: the Makefile reads no variable {name}"


def docker(argv: list[str], command: Command, env: dict[str, str] | None = None) -> None:
    """`docker compose [-f FILE]... up|run|stop ...`: the files, the services and the variables exist; the
    command a `run` gives a service goes through its own parser."""
    parser = argparse.ArgumentParser(prog="docker compose")
    parser.add_argument("compose", choices=["compose"])
    parser.add_argument("-f", "--file", dest="files", action="append", default=[])
    verbs = parser.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up")
    up.add_argument("--scale", action="append", default=[], metavar="SERVICE=N")
    up.add_argument("services", nargs="*")
    run = verbs.add_parser("run")
    run.add_argument("--rm", action="store_true")
    run.add_argument("service")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    verbs.add_parser("stop").add_argument("services", nargs="*")
    with argparse_errors("docker compose"):
        args = parser.parse_args(argv)
    files = args.files or ["docker-compose.yml"]
    for name in files:
        assert (ROOT / name).is_file(), f"docker compose -f {name}: no such file"
    services = {s for name in files for s in yaml.safe_load((ROOT / name).read_text())["services"]}
    named = [*getattr(args, "services", []), *(s.split("=")[0] for s in getattr(args, "scale", []))]
    for service in [*named, *([args.service] if args.verb == "run" else [])]:
        assert service in services, f"docker compose: no service {service!r} in {', '.join(files)}"
    text = "".join(path.read_text() for path in ROOT.glob("*compose*.yml"))  # with the files they extend
    for name in env or {}:
        assert f"${{{name}" in text, f"{name}=: the compose files read no variable {name}"
    if args.verb == "run":
        assert args.argv[:1] == ["python"], "docker compose run: the image's python"
        python(args.argv[1:], command)


def cat(argv: list[str], command: Command) -> None:
    """Files a train_dir holds, as shared/protocol/layout.py names them."""
    for arg in argv:
        path = Path(arg)
        known = {
            getattr(TrainDir(root), name)
            for root in path.parents
            for name, value in vars(TrainDir).items()
            if isinstance(value, property)
        }
        assert path in known, f"cat {arg}: not a file a train_dir holds (shared/protocol/layout.py)"


PARSERS: dict[str, Callable[..., None]] = {
    f"{VENV}python": python,
    f"{VENV}torchrun": torchrun,
    f"{VENV}tensorboard": tensorboard,
    f"{VENV}mlflow": mlflow,
    f"{VENV}pip": pip,
    "make": make,
    "docker": docker,
    "cat": cat,
}
TAKES_ENV = {make, docker}


def argv_of(command: Command) -> tuple[dict[str, str], list[str]]:
    """(environment assignments in front, argv), without a trailing `&` or a `> file` redirection."""
    words = shlex.split(command.text, comments=True)
    env = {}
    while words and ENV.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if words[-1:] == ["&"]:
        words.pop()
    if len(words) > 2 and words[-2] == ">":
        assert (ROOT / words[-1]).is_file(), f"> {words[-1]}: writes a file the checkout does not have"
        words = words[:-2]
    return env, words


def check(command: Command) -> str:
    """How the command is kept true: "run", "parsed" or "marked"; fails otherwise."""
    if command.run_by:
        test = ROOT / command.run_by
        assert test.is_file(), f"{command}: marked as run by {command.run_by}, which does not exist"
        assert command.page.name in test.read_text(), f"{command}: {command.run_by} never reads {command.page.name}"
        return "run"
    env, argv = argv_of(command)
    parser = PARSERS.get(argv[0])
    if parser is None:
        assert command.needs, (
            f"{command}: no test runs it, no parser here knows {argv[0]!r}, and it is not marked; add a parser "
            "to tests/test_docs_commands.py, or a `# needs WHAT: why` line above it (docs/development.md)"
        )
        return "marked"
    assert not env or parser in TAKES_ENV, f"{command}: nothing checks the variables {', '.join(env)}"
    try:
        parser(argv[1:], command, env) if parser in TAKES_ENV else parser(argv[1:], command)
    except AssertionError as err:
        raise AssertionError(f"{command}\n  {err}") from None
    return "parsed"


@pytest.mark.parametrize("command", ALL, ids=lambda c: f"{c.page.name}:{c.line}")
def test_every_command_in_the_docs_is_run_parsed_or_marked(command: Command) -> None:
    assert command.text.split()[0] not in ("python", "pip", "tensorboard", "torchrun", "mlflow"), (
        f"{command}: name the venv's program ({VENV}...), so it works in a fresh shell"
    )
    check(command)


def test_every_fence_names_its_language() -> None:
    """bash for commands, text for output and trees: an untagged block of commands would go unchecked."""
    untagged = [
        f"{page.relative_to(ROOT)}:{line_of(page.read_text(), m.start())}"
        for page in PAGES
        for m in FENCE.finditer(page.read_text())
        if not m.group(1)
    ]
    assert not untagged, f"fences without a language (bash for commands, text for output): {untagged}"


def test_the_walker_finds_commands_in_every_form(tmp_path: Path) -> None:
    """Marks, run-by comments, continuation lines and inline spans are read as the docstring says."""
    page = tmp_path / "page.md"
    page.write_text(
        "Run `make demo` or `.venv/bin/tensorboard` alone.\n\n"
        "<!-- run by tests/test_readme.py -->\n```bash\n.venv/bin/python launch.py \\\n  --train-dir x\n```\n\n"
        "```bash\n.venv/bin/python eval.py --train-dir x &   # a comment\n"
        "# needs a GPU: CUDA only\nnvidia-smi\n# a plain comment ends the mark\nnvidia-smi -L\n```\n"
    )
    found = list(commands(page))
    assert [(c.line, c.text, c.run_by, c.needs) for c in found] == [
        (5, ".venv/bin/python launch.py  --train-dir x", "tests/test_readme.py", None),
        (10, ".venv/bin/python eval.py --train-dir x &   # a comment", None, None),
        (12, "nvidia-smi", None, "a GPU: CUDA only"),
        (14, "nvidia-smi -L", None, None),
        (1, "make demo", None, None),
    ]
    assert check(found[2]) == "marked"
    with pytest.raises(AssertionError, match="not marked"):
        check(found[3])
    with pytest.raises(AssertionError, match="unrecognized arguments: --bogus"):
        check(Command(page, 1, ".venv/bin/python eval.py --train-dir x --bogus"))
    with pytest.raises(AssertionError, match="no such file"):
        check(Command(page, 1, ".venv/bin/python train.py --config configs/nope.yaml --train-dir x"))
