"""The core install (``pip install drivemtl``, no extra) pulls no GPL or LGPL code.

The package's own requirements come from ``pyproject.toml``; their requirements, transitively,
from the metadata of the installed distributions (``importlib.metadata``), with the extras each
requirement asks for and the environment markers evaluated for this machine.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
requirements = pytest.importorskip("packaging.requirements")
utils = pytest.importorskip("packaging.utils")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
COPYLEFT = re.compile(r"\b[AL]?GPL|GNU (?:Lesser |Library |Affero )?General Public", re.IGNORECASE)


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def _applies(requirement, extras: set[str]) -> bool:
    """Whether a requirement applies here, for a distribution installed with ``extras``."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def walk(lines: list[str]) -> tuple[dict[str, metadata.Distribution], list[str]]:
    """Every distribution that ``lines`` need, transitively: ``{name: distribution}``, and the
    requirements that are not installed (as ``name (needed by parent)``)."""
    own = utils.canonicalize_name(_project()["name"])
    queue = [(requirements.Requirement(line), own) for line in lines]
    seen: set[tuple[str, frozenset]] = set()
    found: dict[str, metadata.Distribution] = {}
    missing = []
    while queue:
        requirement, parent = queue.pop()
        name = utils.canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if name == own:  # a self-reference such as drivemtl[upgrad]
            optional = _project()["optional-dependencies"]
            queue += [(requirements.Requirement(r), own) for e in extras for r in optional[e]]
            continue
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(f"{name} (needed by {parent})")
            continue
        found[name] = distribution
        for line in distribution.requires or []:
            child = requirements.Requirement(line)
            if _applies(child, extras):
                queue.append((child, name))
    return found, missing


def licences(distribution: metadata.Distribution) -> list[str]:
    """What a distribution's metadata says of its licence: the SPDX expression, the first line
    of the licence field, the licence classifiers."""
    meta = distribution.metadata
    found = [meta.get("License-Expression") or ""]
    field = (meta.get("License") or "").strip()
    found.append(field.splitlines()[0] if field else "")
    found += [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return [f for f in found if f]


def is_copyleft(distribution: metadata.Distribution) -> bool:
    """GPL or LGPL with no permissive alternative (``MIT OR GPL-2.0`` and a classifier list
    that also names a non-GPL licence are dual licences, not copyleft-only)."""
    expression = distribution.metadata.get("License-Expression")
    if expression:
        return all(COPYLEFT.search(part) for part in re.split(r"\s+OR\s+", expression))
    stated = licences(distribution)
    specific = [c for c in stated if c.startswith("License ::") and c.count("::") >= 2]
    if specific and not all(COPYLEFT.search(c) for c in specific):
        return False
    return any(COPYLEFT.search(s) for s in stated)


def test_the_core_install_has_no_gpl_or_lgpl_dependency():
    found, missing = walk(_project()["dependencies"])
    assert not missing, f"not installed, so not checked: {missing}; install the package first"
    assert {"torch", "torchjd", "lightning"} <= set(found)  # the walk reached the core
    copyleft = {name: licences(d) for name, d in found.items() if is_copyleft(d)}
    assert not copyleft, f"GPL/LGPL in the core install: {copyleft}"


def test_the_check_finds_the_gpl_solver_behind_the_upgrad_extra():
    # The same walk over the extra that brings UPGrad's solver finds quadprog and qpsolvers.
    if any(p not in metadata.packages_distributions() for p in ("quadprog", "qpsolvers")):
        pytest.skip("drivemtl[upgrad] is not installed")
    found, _ = walk(_project()["optional-dependencies"]["upgrad"])
    assert {"quadprog", "qpsolvers"} <= {n for n, d in found.items() if is_copyleft(d)}
    assert not is_copyleft(found["torchjd"])


def test_the_core_training_loop_does_not_import_torchjd():
    # Imported when a gradient method is built, not before (a subprocess: a clean sys.modules).
    import subprocess
    import sys

    code = (
        "import sys; from drivemtl.mtl.objective import build_objective; "
        "build_objective(['a', 'b'], balancing='famo', diagnose_every=1); "
        "print('torchjd' in sys.modules)"
    )
    root = str(PYPROJECT.parent)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
