"""Qt-free helpers of the PromptReg Slicer module: MRML nodes ↔ worker files, dependencies, the example.

A package (not top-level files) because Slicer loads every top-level ``.py`` of its scripted-modules
folder as a module.
"""
