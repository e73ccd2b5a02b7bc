"""Benchmark of the continuum methods (gaussian, chebyshev, median) against specutils' fit_generic_continuum and an
astroNN-style Chebyshev fit, in one run on the same spectra on the full common grid (47,414 pixels): every pixel
covered (the speed goal: 1,000 spectra/s per core), and APOGEE's three chips.

Spectra: stars of the mock sky's physics (`synth.continuum` x `synth.normalised_spectrum`, Teff 4,000 / 5,000 / 6,500
K), random flux scales, S/N 100 per pixel in the continuum, ~5% of the pixels masked in runs of 1-12 (bad columns,
cosmic rays). Accuracy: RMS of c / c_true - 1 over the usable pixels.

astroNN-style: what astroNN's continuum normalisation does, written here from its description: per spectrum and per chip
(segment), a Chebyshev polynomial (degree 2) fitted with numpy's polynomial fit to the pixels of a continuum-pixel mask,
weighted by the inverse variance; the mask here is one list for all stars, the pixels line-free (normalised flux > 0.99)
in all three. Our chebyshev method is also run on the same pixels for a like-for-like row.

Usage: python bench/continuum.py [--n 128] [--n-slow 3] [--repeat 3]   (writes bench/results/continuum.md)
Single thread (all thread pools pinned to 1); speeds are per CPU-second of this process (one core), best of --repeat.
"""

import os

for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMBA_NUM_THREADS'):
    os.environ.setdefault(_v, '1')
import argparse, platform, time, warnings
from datetime import datetime, timezone
from pathlib import Path
import numpy as np
from numpy.polynomial import chebyshev
from stellar_spectra.formats import APOGEE_CHIPS, apogee_wavelength
from stellar_spectra.pipeline.resample import common_grid
from stellar_spectra.mock.synth import continuum as synth_continuum, normalised_spectrum
from stellar_spectra.pipeline.continuum import METHODS


def stars(wave, R):
    "True continua and normalised spectra of three stars (a cool giant, a solar-type dwarf, a hot dwarf)."
    out = []
    for teff, logg in [(4000, 2.0), (5000, 4.4), (6500, 4.2)]:
        p = dict(teff=teff, logg=logg, fe_h=0.0, alpha_fe=0.0, vsini=3.0)
        out.append((synth_continuum(wave, teff), normalised_spectrum(wave, p, R)))
    return out


def batch(wave, templates, n, coverage, snr=100, mask_frac=0.05, seed=0):
    "flux, ivar, mask, true continuum (N, P) of n noisy spectra of the templates, and the line-free pixels (P,)."
    rng = np.random.default_rng(seed)
    P = len(wave)
    which = np.arange(n) % len(templates)
    scale = 10 ** rng.uniform(-1, 1, n)[:, None]
    cont = np.stack([templates[i][0] for i in which]) * scale
    norm = np.stack([templates[i][1] for i in which])
    sig = cont / snr
    flux = cont * norm + rng.normal(size=(n, P)) * sig
    bad = np.zeros((n, P), bool)
    for i in range(n):  # runs of 1-12 bad pixels until ~mask_frac of the pixels
        starts = rng.integers(0, P, int(mask_frac * P / 6.5))
        lens = rng.integers(1, 13, len(starts))
        for s, l in zip(starts, lens):
            bad[i, s : s + l] = True
    flux[bad] = np.where(rng.uniform(size=bad.sum()) < 0.5, np.nan, 1e3 * flux[bad])  # garbage under the mask
    bad |= ~coverage
    line_free = np.all([t[1] > 0.99 for t in templates], axis=0)  # one continuum-pixel list for all stars, as astroNN's
    return np.where(coverage, flux, np.nan), np.where(coverage, sig**-2, 0.0), bad, cont, line_free


def segments(covered, min_gap=50):
    "Contiguous runs [(start, stop)] of covered pixels, split at gaps longer than min_gap."
    idx = np.flatnonzero(covered)
    cut = np.flatnonzero(np.diff(idx) > min_gap)
    return list(zip(idx[np.r_[0, cut + 1]], idx[np.r_[cut, len(idx) - 1]] + 1))


def astronn_style(wave, flux, ivar, mask, cont_pix, chips, deg=2):
    "astroNN-style: per spectrum and chip, an ivar-weighted Chebyshev fit (numpy) to the continuum pixels."
    out = np.full(flux.shape, np.nan)
    for i in range(len(flux)):
        for a, b in chips:
            sel = cont_pix[a:b] & ~mask[i, a:b] & (ivar[i, a:b] > 0)
            c = chebyshev.chebfit(wave[a:b][sel], flux[i, a:b][sel], deg, w=np.sqrt(ivar[i, a:b][sel]))
            out[i, a:b] = chebyshev.chebval(wave[a:b], c)
    return out


def specutils_generic(wave, flux, mask, chips, n):
    "specutils' fit_generic_continuum on each chip of n spectra (it takes no mask: masked pixels are cut out)."
    import astropy.units as u
    from specutils import Spectrum
    from specutils.fitting import fit_generic_continuum

    out = np.full((n, len(wave)), np.nan)
    for i in range(n):
        for a, b in chips:
            ok = ~mask[i, a:b]
            s = Spectrum(flux=flux[i, a:b][ok] * u.one, spectral_axis=wave[a:b][ok] * u.AA)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                out[i, a:b] = fit_generic_continuum(s)(wave[a:b] * u.AA).value
    return out


def best(fn, repeat):
    "Result and the best CPU time (this process, single thread) of `repeat` runs."
    times = []
    for _ in range(repeat):
        c0 = time.process_time()
        r = fn()
        times.append(time.process_time() - c0)
    return r, min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=128, help='spectra for the fast methods')
    ap.add_argument('--n-slow', type=int, default=3, help='spectra for specutils')
    ap.add_argument('--repeat', type=int, default=3, help='timings per method (the best is kept)')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'continuum.md'))
    a = ap.parse_args()
    grid = common_grid()
    W = grid.wave
    load = os.getloadavg()[0]
    wa = apogee_wavelength()
    apo = np.zeros(grid.n, bool)
    for lo, hi in APOGEE_CHIPS.values():
        apo |= (W >= wa[lo]) & (W <= wa[hi - 1])
    templates = stars(W, grid.R)
    rows = []
    for label, cov in [('whole grid covered', np.ones(grid.n, bool)), ('APOGEE coverage', apo)]:
        fl, iv, mk, ct, cpix = batch(W, templates, a.n, cov)
        ok = ~mk
        rms = lambda c, k=slice(None): float(np.sqrt(np.nanmean((c[k] / ct[k] - 1)[ok[k]] ** 2)))
        chips = segments(cov)
        for name, fn in METHODS.items():
            fn(W, fl[:2], iv[:2], mk[:2])  # warm-up: numba compilation (cached on disk after the first run)
            c, t = best(lambda: fn(W, fl, iv, mk), a.repeat)
            rows.append((label, f'stellar_spectra {name}', a.n, t, rms(c)))
        on_pix = lambda: METHODS['chebyshev'](W, fl, iv, mk, deg=2, continuum_pixels=cpix, niter=1)
        on_pix()  # warm-up
        c, t = best(on_pix, a.repeat)
        rows.append((label, 'stellar_spectra chebyshev, deg 2, on the continuum pixels, 1 iteration', a.n, t, rms(c)))
        c, t = best(lambda: astronn_style(W, fl, iv, mk, cpix, chips), a.repeat)
        rows.append(
            (label, 'astroNN-style Chebyshev (deg 2 per chip, continuum pixels, numpy, per spectrum)', a.n, t, rms(c))
        )
        ref = a.n / t
        c, t = best(lambda: specutils_generic(W, fl, mk, chips, a.n_slow), 1)
        rows.append(
            (label, 'specutils fit_generic_continuum (per spectrum and chip)', a.n_slow, t, rms(c, slice(0, a.n_slow)))
        )
        rows = [r + ((r[2] / r[3]) / ref,) if r[0] == label and len(r) == 5 else r for r in rows]
    lines = [
        '# Continuum benchmark',
        '',
        f'{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs shared by '
        f'several jobs (load average {load:.2f} at the start); Python {platform.python_version()}, numpy '
        f'{np.__version__}; '
        'one thread. `python bench/continuum.py` ' + f'--n {a.n} --n-slow {a.n_slow} --repeat {a.repeat}.',
        '',
        f'Spectra: mock-sky stars (synth; Teff 4,000, 5,000, 6,500 K) on the full common grid ({grid.n:,} pixels), S/N '
        '100, '
        '~5% of the pixels masked in runs of 1-12 (garbage under the mask). Speeds are per CPU-second of this '
        'single-threaded '
        f'process (what one core delivers whatever the load), best of {a.repeat}; specutils once on {a.n_slow} '
        'spectra. '
        'RMS: of c / c_true - 1 over the usable pixels. "x astroNN" is the speed ratio to the astroNN-style fit in the '
        'same run.',
        '',
        '| coverage | method | spectra | spectra/s per core | ms per spectrum | RMS | x astroNN |',
        '|---|---|---|---|---|---|---|',
    ]
    speed = lambda x: f'{x:,.0f}' if x >= 10 else f'{x:.2f}'
    lines += [
        f'| {cv} | {m} | {n} | {speed(n / t)} | {t / n * 1e3:.2f} | {e:.4f} | {x:.3g} |' for cv, m, n, t, e, x in rows
    ]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out + '.tmp')
    tmp.write_text('\n'.join(lines) + '\n')
    os.replace(tmp, a.out)
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
