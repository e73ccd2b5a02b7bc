"""Survey I/O: the spectrum and catalogue readers of the three archives, and the verified, resumable download."""
