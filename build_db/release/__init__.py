"""The release side: the HMBA-BG release as the bucket has it (layout, manifest), getting it (download,
the shared cache), judging it (check), reading its matrices (h5ad) and generating one (synth)."""
