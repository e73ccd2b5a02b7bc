"""The autoencoder peer's training step (`SpectrumAutoencoder.fit`, what the evaluate stage runs) against the naive
variant that renders every survey block for every star of the batch, in one run, on the same batches and from the same
initial weights, with the losses checked equal. Needs `make run`'s outputs (store, model, mock sky).

Usage: .venv/bin/python bench/peer_autoencoder.py [--root .] [--steps 20] (appends to bench/results/peer_autoencoder.md)
"""

import argparse, datetime, os, platform, time
from pathlib import Path
import numpy as np
import torch
from stellar_spectra.evaluation.results import load_evaluation, EvalConfig
from stellar_spectra.evaluation.peer_methods import SpectrumAutoencoder, star_matrix


def naive_fit(ae, m, steps, batch=32, lr=1e-3, seed=0):
    "The loss over the whole row (every block rendered for every star), with fit's batches, optimiser and schedule."
    rows, rng = np.flatnonzero((m.W > 0).any(1)), np.random.default_rng(seed)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.05 + 0.475 * (1 + np.cos(np.pi * min(s / steps, 1))))
    perm, losses = [], []
    ae.train()
    for _ in range(steps):
        if len(perm) < min(batch, len(rows)):
            perm = list(rng.permutation(rows))
        idx, perm = np.sort(perm[:batch]), perm[batch:]
        X, W = (torch.as_tensor(a[idx]) for a in (m.X, m.W))
        loss = (W * (ae(X, W) - X) ** 2).sum() / (W > 0).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--root', default='.')
    ap.add_argument('--steps', type=int, default=20)
    a = ap.parse_args()
    r = Path(a.root) / 'data'
    E = load_evaluation(r / 'store' / 'regridded.h5', r / 'model', r / 'mock_sky')
    m = star_matrix(E['train'])
    hidden = EvalConfig().ae_hidden
    fast = SpectrumAutoencoder(m, E['model'].cfg, enc_hidden=hidden)
    slow = SpectrumAutoencoder(m, E['model'].cfg, enc_hidden=hidden)
    t0 = time.perf_counter()
    fast.fit(m, steps=a.steps, eval_every=1)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ls = naive_fit(slow, m, a.steps)
    t_slow = time.perf_counter() - t0
    lf = [h['train'] for h in fast.history]
    rel = max(abs(x - y) / abs(y) for x, y in zip(lf, ls))
    assert rel < 1e-4, ('losses differ', lf, ls)
    line = (
        f'| {datetime.date.today()} | {platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
        f'torch {torch.__version__}, {torch.get_num_threads()} threads | {len(m)} stars, {m.X.shape[1]} columns | '
        f'{a.steps} | {t_slow:.1f} | {t_fast:.1f} | {t_slow / t_fast:.2f}x | {rel:.1e} |'
    )
    out = Path(__file__).parent / 'results' / 'peer_autoencoder.md'
    if not out.exists():
        out.write_text(
            '# Autoencoder peer: training steps, blocks rendered only where the batch has data, against every block\n\n'
            '`SpectrumAutoencoder.fit` (what `evaluate` runs) against the naive loss over whole rows, same batches and '
            'initial weights, one run; losses compared at every step. Store: `make run`\'s.\n\n'
            '| date | machine | training matrix | steps | naive (s) | fit (s) | speed-up | max loss difference |\n'
            '|---|---|---|---|---|---|---|---|\n'
        )
    with open(out, 'a') as f:
        f.write(line + '\n')
    print(line)


if __name__ == '__main__':
    main()
