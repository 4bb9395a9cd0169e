"""The package declares what it imports, imports what it declares, and carries its metadata."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "drivemtl"

RUNTIME_ONLY = {
    "faster-coco-eval": "torchmetrics' COCO mAP backend, chosen by name",
    "jsonargparse": "LightningCLI's parser; its signatures extra is what LightningCLI needs",
    "tensorboard": "writes and shows the default TensorBoardLogger's events.* files",
    "opencv-python-headless": "cv2 (imported), kept beside albumentations' own requirement",
}
"""Declared core dependencies that no ``import`` names, and why they are there."""


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip()).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imported_modules() -> dict[str, set[str]]:
    """Top-level modules imported anywhere in drivemtl/ (absolute imports) -> files."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    stdlib = set(sys.stdlib_module_names) | {"drivemtl", "__future__"}
    return {m: files for m, files in found.items() if m not in stdlib}


def test_every_imported_distribution_is_declared():
    project = _project()
    declared = {_name(r) for r in project["dependencies"]}
    optional = {
        extra: {_name(r) for r in requirements}
        for extra, requirements in project.get("optional-dependencies", {}).items()
    }
    anywhere = declared.union(*optional.values())
    providers = packages_distributions()
    undeclared = {}
    for module, files in _imported_modules().items():
        distributions = {_name(d) for d in providers.get(module, [])}
        assert distributions, f"{module} (imported in {sorted(files)}) is not installed here"
        if not distributions & anywhere:
            undeclared[module] = (sorted(distributions), sorted(files))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_every_core_dependency_is_imported_or_says_why():
    providers = packages_distributions()
    imported = {_name(d) for module in _imported_modules() for d in providers.get(module, [module])}
    unused = {_name(r) for r in _project()["dependencies"]} - imported - set(RUNTIME_ONLY)
    assert not unused, f"declared but never imported (and no reason in RUNTIME_ONLY): {unused}"


def test_lightning_comes_without_its_extras():
    # pytorch-extra would bring hydra-core, omegaconf, rich, jsonnet and bitsandbytes.
    lightning = [r for r in _project()["dependencies"] if _name(r) == "lightning"]
    assert lightning and "[" not in lightning[0]
    jsonargparse = [r for r in _project()["dependencies"] if _name(r) == "jsonargparse"]
    assert jsonargparse and "signatures" in jsonargparse[0]


def test_the_metadata_files_exist_and_the_version_has_one_source():
    project = _project()
    assert "version" not in project and "version" in project["dynamic"]
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "drivemtl.__version__"}
    assert (PACKAGE / "py.typed").is_file() and "py.typed" in setuptools["package-data"]["drivemtl"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    import drivemtl

    assert re.fullmatch(r"\d+\.\d+\.\d+", drivemtl.__version__)
    tested = f"Programming Language :: Python :: {sys.version_info.major}.{sys.version_info.minor}"
    assert tested in project["classifiers"]


def test_ci_runs_the_readme_test_command_verbatim():
    """The README's second quickstart command is what CI runs, character for character."""
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quickstart, flags=re.S)
    assert len(commands) == 2, commands  # install + demo, dev extras + tests
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


LIGHT = ["--help", "convert --help", "convert coco --help", "compare --help", "evaluate --help"]


@pytest.mark.parametrize("argv", [*LIGHT, "inspect --help"])
def test_light_commands_start_without_torch_or_lightning(argv):
    """These answer in a fraction of a second: torch and Lightning are imported by the
    commands that train or predict only."""
    code = (
        "import contextlib, io, sys\n"
        "from drivemtl.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    try: main({argv.split()!r})\n"
        "    except SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'lightning', 'torchvision') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
