#!/usr/bin/env bash
# The seed-scale run on the GPU machine (the device tool: 16 cores, one GPU, 64 GB of disk, torch/numpy/scipy/h5py/pandas/
# triton/tqdm and nothing else). Prepare here with `bash bench/gpu_wheels.sh`, then, on one warm machine, back to back:
#   bash bench/scale_gpu.sh install      three times, carrying .whl/1, .whl/2 and .whl/3 in turn (64 MiB per call);
#                                        they go to .gpusite/, which is not carried and so stays on the machine
#   bash bench/scale_gpu.sh run [ARGS]   `stellar-spectra scale --params params.yaml ARGS` (the seed-scale preset),
#                                        its summary, results table and scaling row under $OUT
set -u
cd "$(dirname "$0")/.."
case "${1:-run}" in
install)
  python3 -m pip install -q --no-index --no-deps --no-compile --target .gpusite .whl/*/*.whl 2>&1 | grep -v 'already exists' | tail -3
  du -sh .gpusite; ls .gpusite | head -50 ;;
run)
  shift || true
  export PYTHONPATH=$PWD/.gpusite:$PWD PYTHONUNBUFFERED=1
  OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; DIR=${SCALE_DIR:-$PWD/data/scale}
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; df -h "$PWD" | tail -1
  python3 -c "import torch, numba, pyarrow, astropy, distributed; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" || exit 1
  timeout ${SCALE_TIMEOUT:-580} python3 -c "from stellar_spectra.cli import main; main()" scale --params params.yaml --outdir "$DIR" \
    --no-progress "$@" > "$OUT/scale_summary.json" 2> "$OUT/scale_stderr.txt"
  echo "scale rc $?"; tail -5 "$OUT/scale_stderr.txt"
  cp "$DIR"/stages.json "$DIR"/scale.json "$DIR"/parts/*.json "$OUT"/ 2>/dev/null
  cp "$DIR"/results/table.md "$DIR"/model/summary.json "$OUT"/ 2>/dev/null
  cat "$OUT/scale_summary.json" ;;
esac
