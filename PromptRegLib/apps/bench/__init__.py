"""``promptreg bench`` and the demo: PromptReg and intensity-based peers on the shared pairs, one run.

A case is a small JSON file (``PromptRegLib/cases/*.json``; paths relative to the data folder):
``fixed``, ``moving``, optional ``fixed_labels``/``moving_labels`` with ``labels`` {value: name} to score,
``truth_transform`` (ITK, fixed → moving), or landmarks in pixels (x = column, y = row): ``landmarks_csv``
(id,fixed_x,fixed_y,moving_x,moving_y) or ``landmarks_homography`` (an OpenCV FileStorage 3×3 matrix mapping fixed
pixels to moving pixels, sampled on a ``landmark_grid`` of columns × rows over the fixed image); ``prompts_ras``
(clicks on the fixed image) with ``prompt_names`` and ``prompt_source``; and flags ``demo``/``quick``. A case may
say ``"derived_from": "<case>"`` to take every field of that case but its name, description and flags, and
``"resample_spacing": [mm, ...]`` to register its images resampled onto that spacing over the same physical space
(linear for images, nearest for labels; written once into the bench work folder and reused). Add a file to add a case.

Each (case, method) runs in its own process so wall time and peak memory are the method's own; a run that crashes,
passes its time limit or its memory cap becomes an error row saying so, and the bench goes on.
"""
from __future__ import annotations
