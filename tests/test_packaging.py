"""The set-up files agree with each other: pyproject is the truth, environment.yml delegates."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_delegates_to_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert len(pip) == 1, "environment.yml must only install the project itself"
    match = re.fullmatch(r"-e \.\[([\w,]+)\]", pip[0])
    assert match, pip
    extras = set(match.group(1).split(","))
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])
    assert "gpu" not in extras or "cpu" not in extras, "never install onnxruntime and onnxruntime-gpu together"
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    assert python.replace("python", "") == PYPROJECT["project"]["requires-python"]
    names = {re.split(r"[<>=!\[ ]", d)[0] for d in deps if isinstance(d, str)}
    assert names <= {"python", "pip"}, "every other dependency belongs in pyproject.toml"


def test_pyproject_ranges_not_pins():
    deps = PYPROJECT["project"]["dependencies"]
    for group in PYPROJECT["project"]["optional-dependencies"].values():
        deps = deps + group
    assert not [d for d in deps if "==" in d], "ranges in pyproject; CI pins torch in the Makefile"
    assert any(d.startswith("torch") for d in PYPROJECT["project"]["dependencies"])
    assert "torchvision" not in " ".join(deps)


def test_makefile_pins_cpu_torch_and_ci_calls_make_test():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^TORCH\s*\?=\s*torch==2\.13\.0$", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_extras():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(d.startswith("onnxruntime") and "gpu" not in d for d in extras["cpu"])
    assert any(d.startswith("onnxruntime-gpu[cuda,cudnn]") for d in extras["gpu"])
    assert {"notebooks", "dev"} <= set(extras)
