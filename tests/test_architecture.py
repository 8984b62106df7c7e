"""The layering rules hold (import-linter contracts in pyproject.toml) and docs/ARCHITECTURE.md names only what exists."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"  # the venv's own executable, next to its python


def _lint_imports(config: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extra (import-linter)")
    return subprocess.run([str(LINT_IMPORTS), "--config", str(config), "--no-cache"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_the_contracts_are_the_documented_ones():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    forbidden = {c["name"]: (set(c["source_modules"]), set(c["forbidden_modules"])) for c in contracts
                 if c["type"] == "forbidden"}
    layers = [c["layers"] for c in contracts if c["type"] == "layers"]
    assert len(layers) == 1 and layers[0][0] == "hmpcl_lib.cli"
    parts = {m.strip() for layer in layers[0] for m in layer.split("|")}
    top_level = {f"hmpcl_lib.{p.stem}" for p in (REPO / "hmpcl_lib").iterdir()
                 if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert parts == top_level, f"every top-level part of hmpcl_lib has its layer: {sorted(parts ^ top_level)}"
    assert ({"hmpcl_lib"}, {"pipelines"}) in forbidden.values()
    assert ({"hmpcl_lib.modeling", "hmpcl_lib.train", "hmpcl_lib.retrieval.embedding",
             "hmpcl_lib.retrieval.metrics"},
            {"dagster", "mlflow", "faiss"}) in forbidden.values()
    assert any(src == {"hmpcl_lib"} and "dagster" in mods for src, mods in forbidden.values())


def test_import_contracts_are_kept():
    proc = _lint_imports(REPO / "pyproject.toml")
    assert proc.returncode == 0, f"an import contract is broken:\n{proc.stdout}\n{proc.stderr}"
    assert "0 broken" in proc.stdout


def test_a_lazy_import_inside_a_function_breaks_a_contract(tmp_path):
    """The linter sees imports inside functions: retrieval.index imports faiss only in `_faiss()`, and that counts."""
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["hmpcl_lib"]\ninclude_external_packages = true\n\n'
                      '[[tool.importlinter.contracts]]\nname = "index without faiss (must be broken)"\n'
                      'type = "forbidden"\nsource_modules = ["hmpcl_lib.retrieval.index"]\n'
                      'forbidden_modules = ["faiss"]\n')
    proc = _lint_imports(config)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout + proc.stderr


def test_an_import_cycle_between_parts_breaks_the_layers_contract(tmp_path):
    """A copy of the library where retrieval imports tracking (which imports retrieval): the real contracts fail."""
    import shutil

    shutil.copytree(REPO / "hmpcl_lib", tmp_path / "hmpcl_lib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    search = tmp_path / "hmpcl_lib" / "retrieval" / "search.py"
    search.write_text(search.read_text() + "\n\ndef _champion():\n    from hmpcl_lib import tracking\n\n"
                      "    return tracking.CHAMPION\n")
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    proc = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": str(LINT_IMPORTS.parent)})
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "hmpcl_lib is layered" in proc.stdout and "BROKEN" in proc.stdout
    assert "hmpcl_lib.retrieval.search -> hmpcl_lib.tracking" in proc.stdout


# ---------------------------------------------------------------- docs/ARCHITECTURE.md

PATH = re.compile(r"(?<![\w/.])((?:hmpcl_lib|pipelines|tests|docs|deploy|benchmarks|scripts)/[\w./-]*)")
DOTTED = re.compile(r"(?<![\w/.])((?:hmpcl_lib|pipelines)(?:\.\w+)+)")


def _code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def _named_paths() -> set[str]:
    return {m.rstrip(".") for span in _code_spans(ARCHITECTURE.read_text()) for m in PATH.findall(span)}


def _named_modules() -> set[str]:
    return {m for span in _code_spans(ARCHITECTURE.read_text()) for m in DOTTED.findall(span)}


def _resolves(dotted: str) -> bool:
    """`a.b.c.name`: the longest importable module prefix, then attributes for the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            found = importlib.util.find_spec(module_name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            continue
        obj = importlib.import_module(module_name)
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_architecture_names_the_whole_library():
    named = _named_paths()
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "hmpcl_lib").rglob("*.py")
               if p.name != "__init__.py" or p.parent.name in ("sample", "tracking")}
    missing = sorted(modules - named)
    assert not missing, f"docs/ARCHITECTURE.md does not list these modules: {missing}"


def test_every_path_named_in_architecture_exists():
    named = _named_paths()
    assert len(named) > 40, "the module map was not found in docs/ARCHITECTURE.md"
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"docs/ARCHITECTURE.md names files that do not exist: {missing}"


def test_every_module_named_in_architecture_exists():
    named = _named_modules()
    assert "hmpcl_lib.cli.search" in named
    missing = sorted(m for m in named if not _resolves(m))
    assert not missing, f"docs/ARCHITECTURE.md names modules or attributes that do not exist: {missing}"
