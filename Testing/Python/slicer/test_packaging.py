"""The extension's CMake, run against a stand-in Slicer, installs a qt-scripted-modules tree Slicer can load.

No Slicer can be installed here: ``PromptReg/Testing/CMakeStandIn`` provides Slicer's and CTK's macros as
written from their documented contract (see its header). CMake configures, builds and installs the
extension into a temporary prefix; the checks then read the installed tree, and import ``PromptReg`` and
``PromptRegLib.apps.worker`` from that tree alone (a subprocess without site processing, so neither the
editable install nor the repository is on its path).
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
STAND_IN = REPO / "PromptReg" / "Testing" / "CMakeStandIn"
SCRIPTED_MODULES = Path("lib/Slicer-5.8/qt-scripted-modules")


def _source_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder.parent)) for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    cmake = shutil.which("cmake") or shutil.which("cmake", path=str(Path(sys.executable).parent))
    if cmake is None:
        pytest.fail("cmake is not installed (apt-get install cmake, or pip install cmake): the packaging test "
                    "needs it to configure, build and install the extension")
    root = tmp_path_factory.mktemp("extension")
    steps = [[cmake, "-S", str(REPO), "-B", str(root / "build"), f"-DSlicer_DIR={STAND_IN}", "-DBUILD_TESTING=ON"],
             [cmake, "--build", str(root / "build")],
             [cmake, "--install", str(root / "build"), "--prefix", str(root / "install")]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(step)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return root / "install" / SCRIPTED_MODULES, root / "build"


def test_only_the_module_is_a_top_level_script(installed):
    tree, _ = installed
    assert sorted(p.name for p in tree.glob("*.py")) == ["PromptReg.py"]


def test_library_is_installed_as_a_package_with_every_file_and_sub_package(installed):
    tree, _ = installed
    assert _source_files(tree / "PromptRegLib") == _source_files(REPO / "PromptRegLib")
    for folder in (p for p in (tree / "PromptRegLib").rglob("*") if p.is_dir() and any(p.glob("*.py"))):
        assert (folder / "__init__.py").is_file(), f"{folder} is not a package"


def test_module_helpers_are_a_package_beside_the_module(installed):
    tree, _ = installed
    assert _source_files(tree / "PromptRegSlicer") == _source_files(REPO / "PromptReg" / "PromptRegSlicer")


def test_ui_and_icon_are_installed_where_the_module_looks(installed):
    tree, _ = installed
    for resource in ("Resources/UI/PromptReg.ui", "Resources/Icons/PromptReg.png"):
        assert (tree / resource).read_bytes() == (REPO / "PromptReg" / resource).read_bytes()


def test_slicer_harness_test_scripts_lie_inside_the_module_folder(installed):
    _, build = installed
    scripts = [Path(line) for line in (build / "python_unittests.txt").read_text().split()]
    assert len(scripts) == 2
    for script in scripts:
        assert script.is_file(), script
        assert (REPO / "PromptReg") in script.resolve().parents, f"{script} is outside the module folder"


#: Run in a subprocess with -S -I: no site processing (no editable install, no .pth), no PYTHONPATH; only
#: the installed tree and the plain site-packages folder (slicer-core, vtk, numpy) on sys.path. qt and the
#: two Qt-bound parts of Slicer's Python that slicer-core lacks are replaced by empty stand-ins.
IMPORT_FROM_TREE = textwrap.dedent("""
    import json, sys, types
    tree, site_packages = sys.argv[1], sys.argv[2]
    sys.path[:0] = [tree]
    sys.path.append(site_packages)
    sys.modules["qt"] = types.ModuleType("qt")
    import slicer
    stand_in = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
                 "ScriptedLoadableModuleWidget"):
        setattr(stand_in, name, type(name, (), {"__init__": lambda self, *args: None}))
    sys.modules["slicer.ScriptedLoadableModule"] = stand_in
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    sys.modules["slicer.parameterNodeWrapper"] = wrapper
    import PromptReg
    import PromptRegLib.apps.worker, PromptRegLib.apps.worker_client, PromptRegLib.pipeline.refit
    import PromptRegSlicer.example
    print(json.dumps({"files": {name: sys.modules[name].__file__ for name in
                                ("PromptReg", "PromptRegSlicer.mrml", "PromptRegLib", "PromptRegLib.apps.worker")},
                      "logic": type(PromptReg.PromptRegLogic()).__name__}))
""")


def test_module_and_worker_import_from_the_installed_tree_alone(installed, tmp_path):
    tree, _ = installed
    site_packages = sysconfig.get_paths()["purelib"]
    done = subprocess.run([sys.executable, "-S", "-I", "-c", IMPORT_FROM_TREE, str(tree), site_packages],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for name, path in report["files"].items():
        assert Path(path).resolve().is_relative_to(tree.resolve()), f"{name} came from {path}"
    assert report["logic"] == "PromptRegLogic"


def test_worker_runs_from_the_installed_tree(installed, tmp_path):
    """``python -m PromptRegLib.apps.worker`` as the module starts it, with only the tree on PYTHONPATH."""
    tree, _ = installed
    (tmp_path / "request.json").write_text(json.dumps({"request": "refit", "output_dir": str(tmp_path / "out")}))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), sysconfig.get_paths()["purelib"]])}
    done = subprocess.run([sys.executable, "-S", "-m", "PromptRegLib.apps.worker", str(tmp_path / "request.json")],
                          capture_output=True, text=True, env=environment, cwd=tmp_path)
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 2 and last["type"] == "error" and "pairs_from" in last["message"], done.stderr
