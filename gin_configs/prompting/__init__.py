"""gin files (a package so that gin finds `include`d files from any working directory)."""
