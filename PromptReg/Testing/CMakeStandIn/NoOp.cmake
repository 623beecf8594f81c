# Nothing: the stand-in Slicer has no use file, extension config or CPack step.
