"""The pipeline stages: cross-match, the common grid, continuum, masks, the alignment guard, preprocessing and the stores."""
