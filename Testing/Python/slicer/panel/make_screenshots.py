"""Write the panel screenshots named in the top-level CMakeLists.txt (EXTENSION_SCREENSHOTURLS), offscreen.

    .venv/bin/python Testing/Python/slicer/panel/make_screenshots.py [--out Resources/Screenshots]

The panel is the real ``PromptReg.ui`` loaded by the test harness (PySide6, Qt's offscreen platform) over a real
MRML scene. ``panel.png``: the "Try it" example (CTChest4, shipped with slicerio, made into the example pair by
PromptRegSlicer.example) chosen, with its suggested Prompt X. ``panel_result.png``: the same after Register with
the panel's default model (LiteMedSAM) and the Quick preset, the worker run as Slicer runs it.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "Resources" / "Screenshots")
    parser.add_argument("--preset", default="Quick", help="the panel's preset for the result (default: Quick)")
    args = parser.parse_args(argv)

    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    sys.path.insert(0, str(HERE))
    from PySide6 import QtWidgets

    _app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])  # kept alive while rendering
    from slicer_panel_harness.application import install, wait_until
    from slicer_panel_harness.screenshots import render

    harness = install()
    harness.new_scene()
    module = harness.load_module()
    panel = harness.open_panel(module)
    try:
        import slicerio.data_helper
        from PromptRegSlicer import example, mrml

        ct = mrml.load_volume(Path(slicerio.data_helper.get_testdata_file("CTChest4.nrrd")), "CTChest")
        nodes = example.make_example(ct)
        parameters = panel._parameterNode
        parameters.fixedVolume, parameters.movingVolume = nodes["fixed"], nodes["moving"]
        panel.ui.promptWidget.setCurrentNode(nodes["prompts"])
        panel.ui.presetComboBox.currentIndex = panel.ui.presetComboBox.findText(args.preset)
        panel.ui.statusLabel.text = ("Example loaded: 'CTChest moving' is 'CTChest fixed' under a known deformation "
                                     "('CTChest true deformation'). Press Register.")
        print(render(panel, args.out / "panel.png").size(), args.out / "panel.png")
        panel.ui.registerButton.click()
        wait_until(lambda: panel._run is None, 1800, "the registration")
        if not panel.ui.statusLabel.text.startswith("Done"):
            raise SystemExit(f"the registration did not finish: {panel.ui.statusLabel.text}")
        print(render(panel, args.out / "panel_result.png").size(), args.out / "panel_result.png")
    finally:
        harness.close_panel(panel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
