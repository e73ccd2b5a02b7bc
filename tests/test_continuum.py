"""Continuum normalisation on real-format files: a tiny mock sky written to disk, read by `readers`, put on the common
grid by `resample.to_rest_grid`, normalised by each method and compared with the sky's true continuum; masked pixels;
the real GALAH files; bad input."""

from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from stellar_spectra.pipeline.continuum import METHODS, normalise
from stellar_spectra.mock.mocksky import generate_mock_sky
from stellar_spectra.mock.instrument import model_flux, truth_spectrum
from stellar_spectra.io.readers import read_spectrum
from stellar_spectra.pipeline.resample import common_grid, to_rest_grid
from stellar_spectra.mock.synth import telluric_transmission

REAL = Path(__file__).resolve().parents[1] / '../shared/realdata/galah_dr3_format'
GRID = common_grid()
W = GRID.wave


def true_continuum(spec, star, rows):
    """The sky's continuum of a read spectrum (model flux / normalised truth / telluric left in the file), per
    observation row."""
    c = np.full(len(spec.wave), np.nan)
    for _, o in rows.iterrows():
        on = (spec.wave >= o['wmin'] - 1e-6) & (spec.wave <= o['wmax'] + 1e-6)
        w = spec.wave[on]
        tell = telluric_transmission(w * o['tell_factor'], airmass=o['airmass'], pwv=o['pwv']) ** o['tpow']
        c[on] = model_flux(star, o.to_dict(), w) / truth_spectrum(star, w, o['R'], rv=o['rv_file'], mjd=o['mjd']) / tell
    return c


@pytest.fixture(scope='module')
def sky(tmp_path_factory):
    "(survey, flux, ivar, bad, true continuum) on the grid for the visits, GALAH stars and UVES spectra of a tiny sky."
    out = tmp_path_factory.mktemp('sky')
    generate_mock_sky(out, n_stars=6, seed=11, progress=False)
    stars = pd.read_parquet(out / 'truth' / 'stars.parquet').set_index('star_index', drop=False)
    obs = pd.read_parquet(out / 'truth' / 'observations.parquet')
    obs = obs[(obs['product'] != 'apStar') & ~obs.groupby('star_index')['fault'].transform(lambda f: (f != '').any())]
    res = []
    for _, rows in obs.groupby(np.where(obs['survey'] == 'galah', 'g' + obs['star_index'].astype(str), obs['relpath'])):
        spec = read_spectrum(out / rows['relpath'].iloc[0])
        star = stars.loc[rows['star_index'].iloc[0]].to_dict()
        g = to_rest_grid(spec, GRID, rv=float(star['rv']))
        r = g['resampler']
        c = true_continuum(spec, star, rows)
        cg, _, cbad = r(np.nan_to_num(c), spec.ivar, spec.mask | ~np.isfinite(c))
        ct = np.full(GRID.n, np.nan)
        ct[r.sl] = np.where(cbad, np.nan, cg)
        res.append((spec.survey, g['flux'], g['ivar'], g['bad'] | ~np.isfinite(ct), ct))
    assert {s[0] for s in res} == {'apogee', 'galah', 'ges'}
    return res


@pytest.mark.parametrize('method', list(METHODS))
def test_recovers_the_true_continuum(sky, method):
    errs = {}
    for survey, fl, iv, bad, ct in sky:
        c = METHODS[method](W, fl, iv, bad)
        ok = ~bad & (iv > 0)
        assert np.isfinite(c[ok]).all()
        e = ct[ok] / c[ok] - 1  # relative error of the normalised flux
        assert np.sqrt(np.mean(e**2)) < 0.015 and abs(np.median(e)) < 0.005, (survey, method)
        errs.setdefault(survey, []).append(np.sqrt(np.mean(e**2)))
        nf, niv = normalise(W, fl, iv, bad, method=method)
        assert (niv[bad] == 0).all() and (nf[bad] == 1).all() and np.isfinite(nf).all() and np.isfinite(niv).all()
    assert all(np.sqrt(np.mean(np.square(v))) < 0.008 for v in errs.values()), errs


@pytest.mark.parametrize('method', list(METHODS))
def test_masked_pixels_do_not_move_the_continuum(sky, method):
    _, fl, iv, bad, _ = next(s for s in sky if s[0] == 'galah')
    rng = np.random.default_rng(0)
    idx = np.flatnonzero(~bad)
    edges = np.flatnonzero(np.diff(np.r_[0, (~bad).astype(int), 0]))
    runs = edges.reshape(-1, 2)  # runs of good pixels
    a, b = runs[np.argmax(runs[:, 1] - runs[:, 0])]
    hole = np.arange((a + b) // 2 - 100, (a + b) // 2 + 100)  # mid-camera
    mask = bad.copy()
    mask[rng.choice(idx, len(idx) // 20, replace=False)] = True
    mask[hole] = True
    c0 = METHODS[method](W, fl, iv, mask)
    garbage = fl.copy()
    garbage[mask] = rng.choice([np.nan, np.inf, -1e30, 1e30, 0.0], mask.sum())
    giv = iv.copy()
    giv[mask] = rng.choice([np.nan, np.inf, -1.0, 1e30], mask.sum())
    np.testing.assert_array_equal(METHODS[method](W, garbage, giv, mask), c0)  # what is under the mask is never read
    nf, niv = normalise(W, garbage, giv, mask, method=method)
    assert (niv[mask] == 0).all() and (nf[mask] == 1).all() and np.isfinite(nf).all()
    # a masked region is bridged from both sides: the continuum there stays within 1% of the unmasked estimate
    c1 = METHODS[method](W, fl, iv, bad)
    assert np.nanmax(np.abs(c0[hole] / c1[hole] - 1)) < 0.01


@pytest.mark.skipif(not REAL.exists(), reason='real GALAH files not present')
@pytest.mark.parametrize('method', list(METHODS))
def test_real_galah_normalises_to_one_in_line_free_regions(method):
    spec = read_spectrum(REAL / '1402070012010051.fits')
    ref = read_spectrum(REAL / '1402070012010051.fits', normalised=True)  # GALAH's own normalisation, rest frame
    g, gr = to_rest_grid(spec, GRID), to_rest_grid(ref, GRID)
    nf, niv = normalise(W, g['flux'], g['ivar'], g['bad'], method=method)
    line_free = (gr['flux'] > 0.98) & ~gr['bad'] & (niv > 0)
    assert line_free.sum() > 500
    assert abs(np.median(nf[line_free]) - 1) < 0.015
    assert np.median(np.abs(nf - gr['flux'])[line_free]) < 0.02
    assert (niv[g['bad']] == 0).all()


@pytest.mark.parametrize('method', list(METHODS))
def test_bad_input(method):
    fl = np.ones((2, GRID.n))
    iv = np.ones((2, GRID.n))
    for flux, ivar, mask in [
        (fl, iv, np.ones(GRID.n, bool)),
        (np.full_like(fl, np.nan), iv, None),
        (fl, np.zeros_like(iv), None),
        (fl, np.full_like(iv, np.nan), None),
    ]:
        assert np.isnan(METHODS[method](W, flux, ivar, mask)).all()  # nothing usable: no continuum ...
        nf, niv = normalise(W, flux, ivar, mask, method=method)
        assert (nf == 1).all() and (niv == 0).all()  # ... and a fully masked output, not an error
    with pytest.raises(ValueError, match='wave has shape'):
        normalise(W[:-1], fl, iv, method=method)
    with pytest.raises(ValueError, match='match'):
        normalise(W, fl, iv[:, :10], method=method)
    with pytest.raises(ValueError, match='mask'):
        normalise(W, fl, iv, np.zeros((3, GRID.n), bool), method=method)
    with pytest.raises(ValueError, match='increasing'):
        normalise(W[::-1], fl, iv, method=method)
    with pytest.raises(ValueError, match='unknown method'):
        normalise(W, fl, iv, method='spline')


@pytest.mark.parametrize('method', list(METHODS))
def test_batch_dtype_and_broadcasting(sky, method):
    fl = np.stack([s[1] for s in sky[:4]])
    iv = np.stack([s[2] for s in sky[:4]])
    bad = np.stack([s[3] for s in sky[:4]])
    c = METHODS[method](W, fl, iv, bad)
    for i in range(4):
        np.testing.assert_array_equal(METHODS[method](W, fl[i], iv[i], bad[i]), c[i])  # batch = one by one
    c32 = METHODS[method](W, fl.astype(np.float32), iv.astype(np.float32), bad)
    ok = np.isfinite(c)
    assert (np.isfinite(c32) == ok).all() and np.allclose(c32[ok], c[ok], rtol=1e-4)
    one_iv = METHODS[method](W, fl[:2], iv[0], bad[0])  # ivar and mask shared by the batch (broadcast)
    np.testing.assert_array_equal(one_iv[0], c[0])
