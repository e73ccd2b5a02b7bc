#!/usr/bin/env bash
# Here (a machine with PyPI): the wheels the seed-scale run needs on the GPU machine, which has only torch, numpy, scipy,
# h5py, pandas, triton and tqdm, no package registry, and takes at most 64 MiB per call. Three sets, one per call:
#   .whl/1: llvmlite (numba's compiler, 57 MiB)   .whl/2: pyarrow (52 MiB)   .whl/3: everything else (47 MiB)
# Then, on the device: `bash bench/scale_gpu.sh install` with carry [".whl/1"], [".whl/2"], [".whl/3"], and
# `bash bench/scale_gpu.sh run` (see that script). Versions: those of this project's environment (constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.12}
pins=$(.venv/bin/python - <<'PYEOF'
import importlib.metadata as md
names = ['astropy', 'pyerfa', 'astropy-iers-data', 'numba', 'llvmlite', 'pyarrow', 'dask', 'distributed', 'cloudpickle',
         'toolz', 'partd', 'locket', 'fsspec', 'msgpack', 'psutil', 'tornado', 'zict', 'tblib', 'sortedcontainers', 'click',
         'jinja2', 'markupsafe', 'PyYAML', 'fastcore', 'packaging', 'matplotlib', 'contourpy', 'cycler', 'fonttools', 'kiwisolver',
         'pillow', 'pyparsing', 'importlib-metadata', 'zipp', 'lazy-importer']
print(' '.join(f'{n}=={md.version(n)}' for n in names))
PYEOF
)
rm -rf .whl; mkdir -p .whl/1 .whl/2 .whl/3
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl/3 $pins 2>&1 | grep -v 'is ignored' || true
mv .whl/3/llvmlite-*.whl .whl/1/; mv .whl/3/pyarrow-*.whl .whl/2/
du -sh .whl/*
