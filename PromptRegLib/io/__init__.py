"""Files in and out: prompts and markups, segmentations, transforms, the report and the figure."""
