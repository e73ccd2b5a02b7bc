"""GON training throughput: the training loop itself (`training.train`) against the naive whole-grid step, in one run.

Variants, on the same model, the same initial parameters and the same kind of spectra:
  naive     : every spectrum rendered on the whole common grid (`resample.common_grid()`, 47,414 pixels; weight 0
              off its survey's pixels), GON step by plain autograd at every pixel (`gon.gon_loss`, shared_origin off);
  observed  : only the observed pixels, padded per batch, same plain autograd step (`gon.gon_loss`);
  training  : `training.train`, the loop the `train` stage runs: observed pixels packed per survey (no padding), the
              shared-origin Fisher step, bf16 autocast and torch.compile of the outer pass where the device has them,
              the whole sample on the device. Its figures are the loop's own: spectra/s over the steps of the last
              validation interval (compilation excluded) and the share of step time spent assembling batches.
The loss of the three on the same spectra and parameters is checked equal (fp32) before timing.

  python bench/gon.py --quick                          # CPU, a minute
  python bench/gon.py --device cuda                    # GPU (bf16 and compile: the loop's 'auto')
"""

import argparse, os, sys, time, platform
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stellar_spectra.pipeline.resample import common_grid
from stellar_spectra.model.gon import GON, gon_loss
from stellar_spectra.model.gon_batches import SpectraBatch
from stellar_spectra.formats import SURVEYS
from stellar_spectra.model.gon_batches import survey_pixels
from stellar_spectra.model.training import PackedSample, TrainConfig, DeviceSample, packed_chi2, train


def mock_grid_spectra(n, grid, seed=0, n_basis=6, n_lines=4000):
    "Cheap mock spectra on the whole grid (a `resample.Grid`): random mixtures of a few line spectra (N, G), float32."
    g = np.random.default_rng(seed)
    lnl = grid.ln_wave
    centres = np.sort(g.uniform(lnl[0], lnl[-1], n_lines))
    idx = np.clip(np.searchsorted(lnl, centres), 0, grid.n - 1)
    basis = np.zeros((n_basis, grid.n))
    for k in range(n_basis):  # delta lines, then a Gaussian blur of the grid's resolution
        np.add.at(basis[k], idx, g.uniform(0, 0.3, n_lines) * (g.random(n_lines) < 0.6))
    s = grid.sampling / 2.3548  # sigma in pixels of a resolution element (FWHM)
    ker = np.exp(-0.5 * (np.arange(-int(4 * s) - 1, int(4 * s) + 2) / s) ** 2)
    basis = np.stack([np.convolve(b, ker, 'same') for b in basis])
    w = g.dirichlet(np.ones(n_basis), n)
    return (1 - np.clip(w @ basis, 0, 0.95)).astype(np.float32)


def mock_sample(n_per_survey, grid, snr=100.0, seed=0):
    "A `PackedSample` of n spectra per survey on its pixels of the grid, one star each, S/N `snr`."
    g, basis = np.random.default_rng(seed), mock_grid_spectra(3 * n_per_survey, grid, seed)
    d = {k: {} for k in ('pix', 'flux', 'wivar', 'star', 'row')}
    for k, s in enumerate(SURVEYS):
        pix = np.flatnonzero(survey_pixels(grid, s))
        sl = slice(k * n_per_survey, (k + 1) * n_per_survey)
        d['pix'][s] = pix
        d['flux'][s] = (basis[sl][:, pix] + g.normal(0, 1 / snr, (n_per_survey, len(pix)))).astype(np.float32)
        d['wivar'][s] = np.full((n_per_survey, len(pix)), snr**2, np.float32)
        d['star'][s] = d['row'][s] = np.arange(sl.start, sl.stop)
    return PackedSample(grid, **d)


def padded_batch(sample, s, rows, device, whole_grid):
    "Rows of one survey as a `SpectraBatch`: its observed pixels, or the whole grid with weight 0 elsewhere."
    grid, pix, n = sample.grid, sample.pix[s], len(rows)
    lnl = torch.tensor(grid.ln_wave, dtype=torch.float64)
    if whole_grid:
        flux, wivar = np.ones((n, grid.n), np.float32), np.zeros((n, grid.n), np.float32)
        flux[:, pix], wivar[:, pix] = sample.flux[s][rows], sample.wivar[s][rows]
        lam = lnl.expand(n, -1)
    else:
        flux, wivar, lam = sample.flux[s][rows], sample.wivar[s][rows], lnl[pix].expand(n, -1)
    w = torch.tensor(wivar > 0, dtype=torch.float32)
    return SpectraBatch(
        lam.contiguous(),
        torch.tensor(flux),
        torch.tensor(np.where(wivar > 0, wivar, 0)),
        w,
        torch.full((n,), SURVEYS.index(s)),
        torch.tensor(sample.star[s][rows]),
    ).to(device)


def decoder_flops_per_pixel(c, shared_first=False):
    """Matmul FLOPs of one decoder forward per pixel (2 x multiply-adds); without the first layer when it is shared by a
    row."""
    E = 2 * c.n_fourier if c.n_fourier else 1
    return 2 * ((0 if shared_first else E * c.hidden) + (c.n_layers - 1) * c.hidden**2 + c.hidden)


def sync(dev):
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)


def time_autograd(name, model, batches, steps, warmup, amp):
    "Training steps/s of `gon.gon_loss` cycling over per-survey batches (the naive and observed variants)."
    dev = batches[0].flux.device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(b):
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = gon_loss(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches * warmup:
        step(b)
    sync(dev)
    t0 = time.perf_counter()
    n_spec = n_px = n_obs = 0
    for _ in range(steps):
        for b in batches:
            step(b)
            n_spec += len(b)
            n_px += b.flux.numel()
            n_obs += int((b.weight > 0).sum())
    sync(dev)
    t = time.perf_counter() - t0
    return dict(
        variant=name,
        batch=len(batches[0]),
        px_rendered=n_px / n_spec,
        px_observed=n_obs / n_spec,
        spectra_s=n_spec / t,
        nominal=3 * decoder_flops_per_pixel(model.cfg) * n_px / t / 1e12,
        executed=None,
        data_wait=None,
        mem=torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == 'cuda' else float('nan'),
    )


def equal_loss(cfg, sample, device):
    "Loss per used pixel of the three variants on the same spectra and initial parameters, fp32."
    torch.manual_seed(cfg.seed)
    model = GON(cfg.model_config(sample.grid)).to(device)
    rows = np.arange(min(4, min(len(v) for v in sample.star.values())))
    out = {}
    for whole, name in ((True, 'naive'), (False, 'observed')):
        model.cfg.shared_origin = not whole
        bs = [padded_batch(sample, s, rows, device, whole) for s in SURVEYS]
        out[name] = sum(float(gon_loss(model, b).detach()) * float(b.weight.sum()) for b in bs) / sum(
            float(b.weight.sum()) for b in bs
        )
    model.cfg.shared_origin = True
    stars = np.concatenate([sample.star[s][rows] for s in SURVEYS])
    data = DeviceSample(sample.subset(stars), model, device)
    groups = data.batch(np.sort(stars))
    res = packed_chi2(model, groups, len(stars), data.u)
    out['training'] = float(sum(c for c, _ in res)) / float(sum(n for _, n in res))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu')
    p.add_argument('--quick', action='store_true', help='small model and batches (CPU smoke run)')
    p.add_argument('--hidden', type=int, default=256)
    p.add_argument('--layers', type=int, default=4)
    p.add_argument('--latent', type=int, default=32)
    p.add_argument('--n-fourier', type=int, default=128)
    p.add_argument('--batch', type=int, default=1024, help='stars (= spectra) per step of the training loop')
    p.add_argument('--batch-observed', type=int, default=256, help='spectra per batch, plain observed variant')
    p.add_argument('--batch-naive', type=int, default=32, help='spectra per batch, whole-grid variant')
    p.add_argument('--steps', type=int, default=40, help='timed training-loop steps (after as many for compilation)')
    p.add_argument(
        '--autograd-steps', type=int, default=3, help='timed cycles over the three survey batches (naive, observed)'
    )
    p.add_argument(
        '--compile', default='auto', choices=('auto', 'yes', 'no'), help="the training loop's torch.compile choice"
    )
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--out', default=None, help='markdown results (default bench/results/gon_cpu.md or gon_gpu.md)')
    a = p.parse_args(argv)
    if a.quick:
        p.set_defaults(
            hidden=64,
            layers=3,
            latent=16,
            n_fourier=32,
            batch=24,
            batch_observed=8,
            batch_naive=2,
            steps=6,
            autograd_steps=2,
        )
        a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    grid = common_grid()
    cfg = TrainConfig(
        latent_dim=a.latent,
        hidden=a.hidden,
        n_layers=a.layers,
        n_fourier=a.n_fourier,
        device=a.device,
        steps=2 * a.steps,
        eval_every=a.steps,
        batch_stars=a.batch,
        eval_stars=a.batch,
        lr=1e-5,
        train_frac=0.8,
        val_frac=0.05,
        compile=a.compile,
    )
    n = max(int(np.ceil(a.batch / 0.8 / 3)) + 4, a.batch_observed, a.batch_naive)
    sample = mock_sample(n, grid)
    eq = equal_loss(TrainConfig(**{**cfg.__dict__, 'device': a.device}), sample, dev)
    from stellar_spectra.model.training import resolve_device

    _, amp, comp = resolve_device(cfg)
    rows = []
    for name, B, whole in (
        ('naive: whole grid, autograd GON step', a.batch_naive, True),
        ('observed pixels (padded), autograd GON step', a.batch_observed, False),
    ):
        torch.manual_seed(cfg.seed)
        m = GON(cfg.model_config(grid)).to(dev)
        m.cfg.shared_origin = False
        bs = [padded_batch(sample, s, np.arange(B), dev, whole) for s in SURVEYS]
        rows.append(time_autograd(name, m, bs, a.autograd_steps, 1, amp))
        del m, bs
        if dev.type == 'cuda':
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    model, hist = train(sample, cfg, progress=False)
    wall = time.perf_counter() - t0
    px = np.mean(np.concatenate([np.full(len(sample.star[s]), len(sample.pix[s])) for s in SURVEYS]))
    obs = float(np.mean(np.concatenate([(sample.wivar[s] > 0).sum(1) for s in SURVEYS])))
    sps = hist['spectra_per_s'][-1]
    c = model.cfg
    rows.append(
        dict(
            variant='training loop (`training.train`)',
            batch=a.batch,
            px_rendered=px,
            px_observed=obs,
            spectra_s=sps,
            nominal=3 * decoder_flops_per_pixel(c) * px * sps / 1e12,
            executed=3 * decoder_flops_per_pixel(c, True) * px * sps / 1e12,
            data_wait=hist['data_wait'][-1],
            mem=torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == 'cuda' else float('nan'),
        )
    )
    name = (
        torch.cuda.get_device_name(dev)
        if dev.type == 'cuda'
        else f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'
    )
    L = [
        f"# GON training throughput on {name}",
        "",
        f"`python bench/gon.py {' '.join(argv if argv is not None else sys.argv[1:])}`: torch {torch.__version__}; "
        f"decoder {c.decoder} "
        f"{c.n_layers} x {c.hidden}, latent {c.latent_dim}, {2 * c.n_fourier} Fourier features, FiLM, {c.step} step; "
        f"{'bf16 autocast' if amp else 'fp32'}{', torch.compile' if comp else ''} in the training loop "
        "(the naive variants use the same autocast, no compile). Spectra on the APOGEE, GALAH and UVES pixel sets in "
        "equal numbers.",
        "",
        "| variant | batch | pixels rendered/spectrum | observed | spectra/s | speed-up | nominal TFLOP/s | executed "
        "TFLOP/s | data wait | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    f = lambda v, fmt: '-' if v is None else format(v, fmt)
    for r in rows:
        L.append(
            f"| {r['variant']} | {r['batch']} | {r['px_rendered']:.0f} | {r['px_observed']:.0f} | {r['spectra_s']:.1f} "
            "| "
            f"{r['spectra_s'] / rows[0]['spectra_s']:.1f}x | {r['nominal']:.3f} | {f(r['executed'], '.3f')} | "
            f"{f(r['data_wait'], '.1%')} | {r['mem']:.1f} |"
        )
    L += [
        "",
        f"Equal loss (fp32, same parameters and spectra, per used pixel): naive {eq['naive']:.6g}, observed "
        f"{eq['observed']:.6g}, "
        f"training loop {eq['training']:.6g} (max relative difference "
        f"{max(abs(v / eq['naive'] - 1) for v in eq.values()):.1e}).",
        "",
        f"The training loop ran {cfg.steps} steps in {wall:.1f} s including its validations and compilation; its "
        "spectra/s are those "
        f"of the last {a.steps} steps. Nominal TFLOP/s = 3 x (decoder matmul FLOPs of one forward per pixel) x pixels "
        "rendered / time, "
        "the definition of earlier runs of this bench. Executed TFLOP/s leaves out the first layer, which the loop "
        "runs once per "
        "pixel of a survey's set rather than once per spectrum (the coordinates are shared by every row), so it is "
        "what the "
        "card multiplied in the per-spectrum passes. Data wait = share of step time spent assembling batches.",
    ]
    out = a.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), 'results', f"gon_{'gpu' if dev.type == 'cuda' else 'cpu'}.md"
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + '.tmp'
    with open(tmp, 'w') as fh:
        fh.write('\n'.join(L) + '\n')
    os.replace(tmp, out)
    print('\n'.join(L))
    print(f"\nwritten to {out}")
    return rows, eq


if __name__ == '__main__':
    main()
