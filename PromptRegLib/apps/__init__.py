"""What people run: the command line, the Slicer worker, cohorts on Dask and the benchmark."""
