"""Benchmark of the continuum methods (gaussian, chebyshev, median) against specutils' fit_generic_continuum and an
astroNN-style Chebyshev fit (degree 2 per chip on supplied continuum pixels, one spectrum at a time, as astroNN does),
in one run on the same spectra on the full common grid (47,414 pixels): APOGEE-like coverage (three chips) and a
spectrum covering the whole grid (the worst case).

Usage: python bench/continuum.py [--n 200] [--n-slow 5] [--repeat 2]   (writes bench/results/continuum.md)
Single thread, so the figures are per core.
"""
import os
for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMBA_NUM_THREADS'): os.environ.setdefault(_v, '1')
import argparse, platform, time, warnings
from datetime import datetime, timezone
from pathlib import Path
import numpy as np
from numpy.polynomial import chebyshev
from stellar_spectra.formats import APOGEE_CHIPS, apogee_wavelength
from stellar_spectra.resample import common_grid
from stellar_spectra.continuum import METHODS, segments


def toy_batch(wave, n, coverage, snr=100, teff=5000, seed=0):
    "flux, ivar, mask, true continuum, continuum pixels of n toy stars (Planck continuum x Gaussian line forest)."
    rng = np.random.default_rng(seed); x = np.log(wave)
    cont = (1e4 / wave) ** 5 / np.expm1(1.4388e8 / (wave * teff))
    norm = np.ones_like(wave); lam = np.log(rng.uniform(wave[0], wave[-1], 6000)); d = rng.uniform(0, 0.6, 6000)
    idx = np.searchsorted(x, lam)
    for k in range(-8, 9):
        j = np.clip(idx + k, 0, len(x) - 1); np.subtract.at(norm, j, d * np.exp(-(x[j] - lam) ** 2 / (2 * 4.2e-5 ** 2)))
    norm = np.clip(norm, 0.05, None); sig = cont / snr
    flux = cont * norm + rng.normal(size=(n, len(wave))) * sig
    return np.where(coverage, flux, np.nan), np.where(coverage, sig ** -2, 0.0) * np.ones((n, 1)), ~coverage & np.ones((n, 1), bool), cont, norm > 0.99


def astronn_style(wave, flux, ivar, cont_pix, chips, deg=2):
    "astroNN-style: per spectrum and chip, an ivar-weighted Chebyshev fit on the continuum pixels."
    out = np.full(flux.shape, np.nan)
    for i in range(len(flux)):
        for a, b in chips:
            sel = cont_pix[a:b] & (ivar[i, a:b] > 0)
            c = chebyshev.chebfit(wave[a:b][sel], flux[i, a:b][sel], deg, w=np.sqrt(ivar[i, a:b][sel]))
            out[i, a:b] = chebyshev.chebval(wave[a:b], c)
    return out


def specutils_generic(wave, flux, mask, n):
    "specutils fit_generic_continuum on each covered segment of n spectra (it has no mask: the segments are cut out)."
    import astropy.units as u
    from specutils import Spectrum
    from specutils.fitting import fit_generic_continuum
    out = np.full((n, len(wave)), np.nan)
    for i in range(n):
        for a, b in segments(~mask[i], 50):
            s = Spectrum(flux=flux[i, a:b] * u.one, spectral_axis=wave[a:b] * u.AA)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore'); out[i, a:b] = fit_generic_continuum(s)(wave[a:b] * u.AA).value
    return out


def timed(fn):
    "Result, CPU time of this process, wall time."
    t0, c0 = time.perf_counter(), time.process_time(); r = fn(); return r, time.process_time() - c0, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--n', type=int, default=200)
    ap.add_argument('--n-slow', type=int, default=5)
    ap.add_argument('--repeat', type=int, default=2)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'continuum.md'))
    a = ap.parse_args()
    W = common_grid().wave; wa = apogee_wavelength(); load = os.getloadavg()[0]
    apo = np.zeros(len(W), bool)
    for lo, hi in APOGEE_CHIPS.values(): apo |= (W >= wa[lo]) & (W <= wa[hi - 1])
    rows = []
    for label, cov in [('APOGEE coverage', apo), ('whole grid covered', np.ones(len(W), bool))]:
        fl, iv, mk, ct, cpix = toy_batch(W, a.n, cov)
        ok = ~mk
        rms = lambda c, k=slice(None): np.sqrt(np.nanmean(((c / ct - 1)[k])[ok[k]] ** 2))
        for name, fn in METHODS.items():
            fn(W, fl[:4], iv[:4], mk[:4])  # warm-up (numba compilation)
            c, t, tw = min((timed(lambda: fn(W, fl, iv, mk)) for _ in range(a.repeat)), key=lambda r: r[1])
            rows.append((label, f'stellar_spectra {name} (batched)', a.n, t, tw, rms(c)))
        chips = segments(cov, 50)
        c, t, tw = timed(lambda: astronn_style(W, fl, iv, cpix, chips))
        rows.append((label, 'astroNN-style Chebyshev (deg 2 per chip, true continuum pixels, per spectrum)', a.n, t, tw, rms(c)))
        c, t, tw = timed(lambda: chebyshev_on_pixels(W, fl, iv, mk, cpix))
        rows.append((label, 'stellar_spectra chebyshev on the same continuum pixels (batched)', a.n, t, tw, rms(c)))
        ns = a.n_slow
        c, t, tw = timed(lambda: specutils_generic(W, fl, mk, ns))
        rows.append((label, 'specutils fit_generic_continuum (per spectrum and segment)', ns, t, tw, rms(c, slice(0, ns))))
    lines = ['# Continuum benchmark', '',
             f'{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs ({platform.machine()}), load average at the start '
             f'{load:.2f} (the machine is shared, so absolute figures are indicative; compare rows within one run); '
             f'Python {platform.python_version()}; single thread.', '',
             f'Toy stars (Teff 5000 K continuum x a Gaussian line forest, S/N 100) on the full common grid ({len(W):,} pixels). '
             f'Fast methods on {a.n} spectra (best of {a.repeat}), specutils on {a.n_slow}. '
             'RMS: of continuum / true continuum - 1 over the covered pixels. Default options for every method.', '',
             'Speeds are per CPU-second of this (single-threaded) process, which is what one core delivers whatever the load; '
             'wall-clock speeds under the shared load are in the last column.', '',
             '| coverage | method | spectra | spectra/s (CPU) | CPU ms per spectrum | RMS | spectra/s (wall) |', '|---|---|---|---|---|---|---|']
    lines += [f'| {cv} | {m} | {n} | {n / t:,.0f} | {t / n * 1e3:.2f} | {e:.4f} | {n / tw:,.0f} |' for cv, m, n, t, tw, e in rows]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out + '.tmp'); tmp.write_text('\n'.join(lines) + '\n'); os.replace(tmp, a.out)
    print('\n'.join(lines))


def chebyshev_on_pixels(W, fl, iv, mk, cpix):
    return METHODS['chebyshev'](W, fl, iv, mk, deg=2, continuum_pixels=cpix, niter=1)


if __name__ == '__main__':
    main()
