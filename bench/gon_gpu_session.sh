#!/usr/bin/env bash
# One GPU slot (the device tool: a bare machine with torch, numpy, scipy, h5py, pandas, triton, tqdm): train the GPU preset
# on a packed mock sky carried in .gpu/, then bench the training loop, then check inference on CUDA. Results under $OUT.
#   carry: .whl (fastcore, PyYAML wheels), .gpu (sky*.npz from `training.save_packed`)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
SKY=$(ls .gpu/*.npz | head -1)
echo "== train (preset gpu) on $SKY"
timeout ${TRAIN_TIMEOUT:-270} python3 -c "from stellar_spectra.cli import main; main()" train --store "$SKY" --outdir "$OUT/model" \
  --params params.yaml --preset gpu --no-progress
echo "train rc $?"
rm -f "$OUT/model/last.pt"
echo "== bench"
timeout ${BENCH_TIMEOUT:-170} python3 bench/gon.py --device cuda --steps 20 --out "$OUT/gon_gpu.md" || \
  timeout 60 python3 bench/gon.py --device cuda --steps 10 --compile no --out "$OUT/gon_gpu.md"
echo "== inference on CUDA"
timeout 90 python3 - "$SKY" "$OUT/model/best.pt" <<'PY' 2>&1 | tail -15
import sys, time, numpy as np, torch
from stellar_spectra.model.training import load_packed
from stellar_spectra.model.gon import load_checkpoint
from stellar_spectra.model.gon_batches import SpectraBatch
from stellar_spectra.model.inference import fit_latent
s = load_packed(sys.argv[1]); m, _, meta = load_checkpoint(sys.argv[2], map_location='cuda'); m = m.cuda()
sv = 'galah'; n = 8; pix = s.pix[sv]; w = s.wivar[sv][:n]
lnl = torch.tensor(s.grid.ln_wave[pix], dtype=torch.float64).expand(n, -1).contiguous()
b = SpectraBatch(lnl, torch.tensor(s.flux[sv][:n]), torch.tensor(w), torch.tensor((w > 0).astype(np.float32)),
                 torch.full((n,), 1), torch.arange(n)).to('cuda')
torch.cuda.reset_peak_memory_stats(); t = time.time()
try:
    f = fit_latent(m, b, fit_rv=True)
    print('fit_latent on CUDA ok:', n, 'spectra', round(time.time() - t, 1), 's, peak GiB', round(torch.cuda.max_memory_allocated() / 2**30, 2),
          'reduced chi2', (f['chi2'] / f['dof']).cpu().numpy().round(2), 'rv', f['rv'].cpu().numpy().round(2))
except Exception as e: print('fit_latent on CUDA FAILED:', type(e).__name__, e)
PY
ls -la "$OUT" "$OUT/model"
