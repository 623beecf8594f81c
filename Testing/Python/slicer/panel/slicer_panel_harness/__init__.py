"""The PromptReg panel in a real Qt (PySide6, offscreen) over a real MRML scene (slicer-core), without Slicer.

- ``pythonqt``: the ``qt`` module with PythonQt's idioms (attribute properties, ``connect("sig(args)", slot)``);
- ``widgets``: stand-ins for the ``.ui``'s Slicer and CTK widgets, each following its header;
- ``loader``: ``qt.QUiLoader``: Qt's loader making those classes and replaying the ``.ui``'s connections;
- ``parameter_node``: ``slicer.parameterNodeWrapper`` (typed parameters, ``connectGui``) as Slicer's behaves;
- ``application``: ``slicer.app``, ``slicer.modules``, the scripted-module base classes, :func:`install`;
- ``contract``: every signal, property and method the module uses exists on the class it is used on;
- ``screenshots``: the panel rendered to PNG.

Nothing here is part of the extension: it lives under ``Testing/`` and is used by the panel tests only.
"""
