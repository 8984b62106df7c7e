"""The install a new user runs: every dependency comes from the package registry, pinned in constraints.txt."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")
LOCAL = re.compile(r"@\s*file:|file://|^\s*(/|\./|\.\./|~)|\.(whl|tar\.gz|zip)\b", re.IGNORECASE)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_lines() -> list[tuple[str, str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [("pyproject.toml dependencies", d) for d in project["dependencies"]]
    for extra, deps in project.get("optional-dependencies", {}).items():
        lines += [(f"pyproject.toml [{extra}]", d) for d in deps]
    return lines


def _constraints() -> list[tuple[int, str]]:
    text = (ROOT / "constraints.txt").read_text().splitlines()
    return [(n, line.strip()) for n, line in enumerate(text, 1) if line.strip() and not line.lstrip().startswith("#")]


def test_local_pattern_catches_what_broke_a_fresh_install():
    bad = "efficientnet-lite-pytorch @ file:///tmp/effl/efficientnet_lite_pytorch-0.1.0-py3-none-any.whl#sha256=ce"
    assert LOCAL.search(bad)
    assert LOCAL.search("./wheels/foo-1.0.tar.gz")
    assert not LOCAL.search("faiss-cpu==1.15.1")


def test_every_constraint_is_a_registry_pin():
    bad = [f"constraints.txt:{n}: {line!r}" for n, line in _constraints() if LOCAL.search(line) or not PIN.match(line)]
    assert not bad, "not a registry 'name==version' pin (a new machine cannot install these):\n" + "\n".join(bad)


def test_no_dependency_points_at_a_local_file():
    for where, line in _requirement_lines():
        assert not LOCAL.search(line), f"{where}: {line!r} points at a local file"


def test_every_dependency_is_pinned_in_constraints():
    pinned = {_normalise(PIN.match(line).group(1)) for _, line in _constraints() if PIN.match(line)}
    for where, line in _requirement_lines():
        name = _normalise(re.split(r"[\s<>=!~;\[@]", line, maxsplit=1)[0])
        if name == "faiss-gpu":  # the GPU extra replaces faiss-cpu on CUDA machines; not in the CPU lock
            continue
        assert name in pinned, f"{where}: {line!r} has no pin in constraints.txt"


def test_an_installed_wheel_loads_the_dagster_definitions(tmp_path):
    """A Kubernetes image installs the package without the repository: the dg project config must ship inside it."""
    import subprocess
    import sys

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(ROOT)], check=True, cwd=tmp_path)
    code = "import pipelines.definitions as d; print(d.__file__, len(d.ALL_ASSETS))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    path, count = out.stdout.split()
    assert path.startswith(str(target)) and int(count) >= 10
