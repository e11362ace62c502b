"""The package as a user installs it: a wheel built from the sources, installed outside the checkout."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from rl_mtl import cli
from rl_mtl.cli import install_hint
from install_helpers import expected_hint, extras, setup_cfg_requirements

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
    ``--config`` takes a YAML path; the console scripts answer ``--help`` and name themselves in their errors."""
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
    assert help_.stdout.startswith("usage: rl-mtl-train ")
    for name in SCRIPTS:  # an error names the program as the user started it
        bad = _run(target, tmp_path, sys.executable, str(target / "bin" / name), "--no-such-flag")
        assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(f"{name}: error: "), bad.stderr
    typo = _run(target, tmp_path, sys.executable, str(script), "--method", "imgrd")
    assert typo.returncode == 2 and typo.stderr.startswith("rl-mtl-train: error: --method: unknown method 'imgrd'")


def test_installed_wheel_hints_name_the_requirements(installed: tuple[Path, Path], tmp_path: Path) -> None:
    """Installed from the wheel, the install hint of every extra is ``pip install`` of setup.cfg's requirements for
    it, with no ``pip install -e`` (there is no checkout to point at)."""
    _, target = installed
    code = "import sys\nfrom rl_mtl.cli import install_hint\nfor x in sys.argv[1:]: print(install_hint(x))\n"
    result = _run(target, tmp_path, sys.executable, "-c", code, *extras())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [expected_hint(x, checkout=None) for x in extras()]


@pytest.mark.parametrize("extra", extras())
def test_install_hint_in_the_checkout(extra: str) -> None:
    """From this (editable) checkout: setup.cfg's requirements of the extra, whatever their spelling there, then
    ``pip install -e`` of the checkout itself with the extra."""
    hint = install_hint(extra)
    assert hint == expected_hint(extra), "stale metadata? pip install -e . again after editing setup.cfg"
    requirements, editable = hint.split(" or ")
    pip, install, *names = shlex.split(requirements)
    assert (pip, install) == ("pip", "install") and [Requirement(n) for n in names] == setup_cfg_requirements(extra)
    assert shlex.split(editable) == ["pip", "install", "-e", f"{ROOT}[{extra}]"]


def test_extra_requirements_read_the_markers(monkeypatch: pytest.MonkeyPatch) -> None:
    """An extra's requirements are the entries whose marker holds for that extra and fails without it: not a core
    dependency with a platform marker, not another extra's, not one for another platform."""
    entries = ['numpy>=1.24', 'tomli; python_version >= "3.0"', 'a>=1; extra == "x"', 'b; extra == "y"',
               'c[d]<2,>=1; extra == "x" and python_version >= "3.0"', 'e; extra == "x" and sys_platform == "none"']
    monkeypatch.setattr(cli.importlib.metadata, "requires", lambda name: entries if name == "rl_mtl" else None)
    assert cli.extra_requirements("x") == ["a>=1", "c[d]<2,>=1"]
    assert cli.extra_requirements("z") == []


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
