"""The package as a user installs it: a wheel built from the sources, installed outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what a wheel is built from (everything else in the checkout is not part of the package)
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "rl_mtl", "agents", "envs", "configs")
SCRIPTS = ("rl-mtl-train", "rl-mtl-evaluate", "rl-mtl-sweep", "rl-mtl-report")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(wheel, target)``: the wheel built from a copy of the sources and the directory it is installed into."""
    base = tmp_path_factory.mktemp("package")
    src, dist, target = base / "src", base / "dist", base / "target"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(dist)], check=True)
    (wheel,) = dist.glob("rl_mtl-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return wheel, target


def _run(target: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` from ``cwd`` with the installed wheel first on the path (its dependencies from this env)."""
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_has_one_namespace_the_presets_and_the_license(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert zf.read(info).decode().split() == ["rl_mtl"]
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {n.split("/")[0] for n in names} == {"rl_mtl", wheel.name.split("-py3")[0] + ".dist-info"}
    presets = {Path(p).stem for p in (ROOT / "configs").glob("*.yaml")}
    assert presets and {f"rl_mtl/configs/{p}.yaml" for p in presets} <= set(names)
    assert {"rl_mtl/agents/mtsac.py", "rl_mtl/envs/metaworld.py"} <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    for script in SCRIPTS:
        assert f"{script} = rl_mtl." in entry_points
    assert "Requires-Python: <3.14,>=3.10" in metadata


def test_installed_wheel_works_outside_the_checkout(installed: tuple[Path, Path], tmp_path: Path) -> None:
    """From a directory outside the checkout, the installed copy (not the checkout) resolves every preset and
    ``--config`` takes a YAML path; the console script answers ``--help``."""
    _, target = installed
    code = ("import rl_mtl, rl_mtl.agents.mtsac, rl_mtl.envs.metaworld, rl_mtl.config as c\n"
            "print(rl_mtl.__file__); print(rl_mtl.agents.mtsac.__file__); print(c.CONFIG_DIR)\n"
            "for name in c.presets(): c.build_config(name)\n"
            "print(' '.join(c.presets()))\n"
            "print(c.build_config('own.yaml').hidden_sizes)\n")
    (tmp_path / "own.yaml").write_text("hidden_sizes: [16, 16]\n")
    result = _run(target, tmp_path, sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    where, agents, config_dir, presets, own = result.stdout.splitlines()
    for path in (where, agents, config_dir):
        assert Path(path).resolve().is_relative_to(target.resolve()), path
    assert set(presets.split()) == {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    assert own in ("(16, 16)", "[16, 16]")
    for module in ("agents", "envs"):  # no top-level packages of those names
        assert not (target / module).exists()
    script = target / "bin" / "rl-mtl-train"
    help_ = _run(target, tmp_path, sys.executable, str(script), "--help")
    assert help_.returncode == 0, help_.stderr
    assert "--config" in help_.stdout and "mt10_cpu" in help_.stdout


def test_config_path_errors_name_the_file(tmp_path: Path) -> None:
    """``--config`` with a path: a missing file and a file with an unknown option are one line naming it, exit 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("hiden_sizes: [16, 16]\n")
    for argv, expected in (([str(tmp_path / "missing.yaml")], "missing.yaml"), ([str(bad)], "hiden_sizes")):
        result = subprocess.run([sys.executable, "-m", "rl_mtl.train", "--config", *argv],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--config" in lines[0] and expected in lines[0], result.stderr
