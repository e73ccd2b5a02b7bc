"""Resampling and continuum normalisation against the mock sky's physics (`stellar_spectra.mock.synth`): a noise-free
spectrum rendered at a survey's native resolution and sampling, regridded, must equal the spectrum rendered directly at
the common resolution; pulls have unit width; lines land where they belong; masked pixels never leak."""

import numpy as np
import pytest
from stellar_spectra.formats import (
    APOGEE_R,
    GALAH_COVERAGE,
    GALAH_DISPERSION,
    GALAH_NPIX,
    GALAH_R,
    UVES_R,
    C_KMS,
    apogee_wavelength,
    linear_wavelength,
)
from stellar_spectra.pipeline.resample import Resampler, common_grid, resample
from stellar_spectra.pipeline.continuum import METHODS, normalise

from stellar_spectra.mock import synth
from stellar_spectra.linelist import air_to_vacuum

GRID = common_grid()
HOT = dict(teff=6200, logg=4.2, fe_h=0.0, alpha_fe=0.0, vsini=4.0)
COOL = dict(teff=4300, logg=2.0, fe_h=-0.3, alpha_fe=0.2, vsini=2.0)


def galah_wave(ccd):
    "Vacuum wavelengths of a GALAH camera (linear in air)."
    return air_to_vacuum(linear_wavelength(GALAH_COVERAGE[ccd][0], GALAH_DISPERSION[ccd], GALAH_NPIX))


def uves_wave():
    "A stretch of a UVES U580 spectrum (linear in air, 0.0125 Å steps)."
    return air_to_vacuum(linear_wavelength(5200.0, 0.0125, 8000))


CASES = (
    [('apogee', apogee_wavelength(), APOGEE_R, 0.0)]
    + [(f'galah{c}', galah_wave(c), GALAH_R, 37.5) for c in (1, 2, 3, 4)]
    + [('uves', uves_wave(), UVES_R, -81.0)]
)


@pytest.mark.parametrize('params', [HOT, COOL], ids=['hot', 'cool'])
@pytest.mark.parametrize('name,wave,R,rv', CASES, ids=[c[0] for c in CASES])
def test_noise_free_matches_truth(name, wave, R, rv, params):
    r = Resampler(wave, GRID, R_native=R, rv=rv)
    out, ivar, mask = r(synth.normalised_spectrum(wave, params, R, rv=rv), np.ones(len(wave)))
    truth = synth.normalised_spectrum(r.wave, params, GRID.R)
    inner = slice(10, -10)  # within a resolution element of the ends the kernel is lopsided
    assert not mask[inner].any()
    assert np.abs(out - truth)[inner].max() < 1e-3


def offset_pixels(out, truth, dln):
    "Shift (pixels) that best maps truth onto out, linearised: sum((out - truth) t') / sum(t'^2)."
    d = np.gradient(truth)
    return -((out - truth) * d).sum() / (d * d).sum()


@pytest.mark.parametrize('name,wave,R,rv', CASES[:2] + CASES[-1:], ids=['apogee', 'galah1', 'uves'])
def test_lines_land_where_they_belong(name, wave, R, rv):
    for v in (rv, rv + 150.0):
        r = Resampler(wave, GRID, R_native=R, rv=v)
        out = r(synth.normalised_spectrum(wave, HOT, R, rv=v), np.ones(len(wave)))[0][10:-10]
        truth = synth.normalised_spectrum(r.wave, HOT, GRID.R)[10:-10]
        assert abs(offset_pixels(out, truth, GRID.dln)) < 0.05
    # a deliberately wrong velocity is caught by the same measure
    r = Resampler(wave, GRID, R_native=R, rv=rv + 0.3 * GRID.dln * C_KMS)
    out = r(synth.normalised_spectrum(wave, HOT, R, rv=rv), np.ones(len(wave)))[0][10:-10]
    assert abs(offset_pixels(out, synth.normalised_spectrum(r.wave, HOT, GRID.R)[10:-10], GRID.dln) + 0.3) < 0.05


@pytest.mark.parametrize('name,wave,R,rv', [CASES[0], CASES[3]], ids=['apogee', 'galah3'])
def test_pulls_have_unit_width(name, wave, R, rv):
    rng = np.random.default_rng(1)
    f = synth.normalised_spectrum(wave, COOL, R, rv=rv)
    sig = 0.02 * np.sqrt(np.clip(f, 0.05, None))  # photon-like noise
    noisy = f + rng.normal(size=(300, len(wave))) * sig
    r = Resampler(wave, GRID, R_native=R, rv=rv)
    out, ivar, mask = r(noisy, np.broadcast_to(sig**-2, noisy.shape))
    pull = ((out - synth.normalised_spectrum(r.wave, COOL, GRID.R)) * np.sqrt(ivar))[:, 10:-10]
    assert abs(pull.std() - 1) < 0.03 and abs(pull.mean()) < 0.03


def test_masked_pixels_never_leak():
    wave = galah_wave(2)
    rng = np.random.default_rng(2)
    f = np.tile(synth.normalised_spectrum(wave, HOT, GALAH_R), (5, 1))
    ivar = np.full(f.shape, 1e4)
    mask = rng.uniform(size=f.shape) < 0.05
    mask[:, 2000:2040] = True
    f[mask] = np.nan
    ivar[mask] = np.inf  # garbage under the mask
    r = Resampler(wave, GRID, R_native=GALAH_R)
    out, oiv, omask = r(f, ivar, mask)
    assert np.isfinite(out).all() and np.isfinite(oiv).all()
    hole = np.abs(np.log(r.wave / wave[2020])) < GRID.dln
    assert omask[:, hole].all() and (oiv[omask] == 0).all()
    clean = r(np.tile(synth.normalised_spectrum(wave, HOT, GALAH_R), (5, 1)), np.full(f.shape, 1e4))[0]
    assert np.abs(out - clean)[~omask].max() < 0.05


def test_batch_with_own_velocities_matches_one_by_one():
    wave = galah_wave(1)
    rvs = np.array([-20.0, 35.0, -20.0])
    f = np.stack([synth.normalised_spectrum(wave, HOT, GALAH_R, rv=v) for v in rvs])
    iv = np.ones(f.shape)
    out, oiv, om = resample(wave, f, iv, grid=GRID, R_native=GALAH_R, rv=rvs)
    assert out.shape == (3, GRID.n) and om[:, :100].all()
    for i, v in enumerate(rvs):
        r = Resampler(wave, GRID, R_native=GALAH_R, rv=v)
        np.testing.assert_allclose(out[i, r.sl], r(f[i], iv[i])[0])


@pytest.mark.parametrize('method', list(METHODS))
def test_continuum_methods_recover_synth_continuum(method):
    cover = np.zeros(GRID.n, bool)
    for c in (1, 2, 3, 4):
        w = galah_wave(c)
        cover |= (GRID.wave > w[0]) & (GRID.wave < w[-1])
    cont = synth.continuum(GRID.wave, HOT['teff'])
    norm = synth.normalised_spectrum(GRID.wave, HOT, GRID.R)
    rng = np.random.default_rng(3)
    sig = cont / 200
    flux = np.where(cover, cont * norm + rng.normal(size=(4, GRID.n)) * sig, np.nan)
    ivar = np.where(cover, sig**-2, 0.0) * np.ones((4, 1))
    c = METHODS[method](GRID.wave, flux, ivar, ~cover & np.ones((4, 1), bool))
    assert np.sqrt(np.mean((c / cont - 1)[:, cover] ** 2)) < 0.01
    nf, niv = normalise(GRID.wave, flux, ivar, ~cover & np.ones((4, 1), bool), method=method)
    assert (niv[:, ~cover] == 0).all() and np.isfinite(nf).all()
    assert abs(np.median((nf - norm)[:, cover])) < 0.01


# --- to_rest_grid on mock-sky files of the three surveys ---------------------------------------------------------
import warnings
import pandas as pd
from stellar_spectra.pipeline.resample import to_rest_grid, rest_velocity

TELLURIC = [(5795, 5815), (5865, 6005), (6465, 6605), (6855, 6895), (7155, 7345), (7585, 7760), (8115, 8345)]


@pytest.fixture(scope='module')
def sky(tmp_path_factory):
    from stellar_spectra.mock.mocksky import generate_mock_sky

    root = tmp_path_factory.mktemp('sky')
    generate_mock_sky(root, n_stars=12, seed=3, n_workers=1, progress=False)
    obs = pd.read_parquet(root / 'truth' / 'observations.parquet')
    stars = pd.read_parquet(root / 'truth' / 'stars.parquet').set_index('star_index')
    return root, obs, stars


def _landed_shift(root, o, stars):
    "Read, put on the grid, normalise; shift (px) of the data relative to the truth."
    from stellar_spectra.io.readers import read_spectrum

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        spec = read_spectrum(root / o.relpath)
    star = stars.loc[o.star_index]
    r = to_rest_grid(spec, GRID, rv=None if np.isfinite(spec.frame_rv) else star['rv'])
    nf, niv = normalise(GRID.wave, r['flux'], r['ivar'], r['bad'])
    t = synth.normalised_spectrum(
        GRID.wave, {k: star[k] for k in ('teff', 'logg', 'fe_h', 'alpha_fe', 'vsini')}, GRID.R
    )
    clear = ~np.any([(GRID.wave > a) & (GRID.wave < b) for a, b in TELLURIC], axis=0)
    w = np.where(r['bad'] | (niv == 0) | ~clear, 0.0, np.minimum(niv, np.median(niv[niv > 0])))
    return spec, r, offset_pixels_w(nf, t, w)


def offset_pixels_w(d, t, w):
    tp = np.gradient(t)
    return -(w * (d - t) * tp).sum() / (w * tp * tp).sum()


@pytest.mark.parametrize(
    'survey,product', [('apogee', 'apStar'), ('apogee', 'apVisit'), ('galah', 'ccd1'), ('ges', 'uves')]
)
def test_to_rest_grid_lands_mock_sky_lines(sky, survey, product):
    root, obs, stars = sky
    sel = obs[(obs['survey'] == survey) & (obs['product'] == product) & (obs['anomaly'] == '')].drop_duplicates(
        'relpath'
    )
    assert len(sel)
    for o in sel.head(3).itertuples():
        spec, r, shift = _landed_shift(root, o, stars)
        assert (
            r['flux'].shape == (GRID.n,)
            and r['bad'][: r['resampler'].sl.start].all()
            and (r['ivar'][r['bad']] == 0).all()
        )
        assert r['rv_used'] == pytest.approx(
            rest_velocity(spec, None if np.isfinite(spec.frame_rv) else stars.loc[o.star_index, 'rv'])
        )
        # the velocity removed is the file's velocity of the star (mock truth), 0 for rest-frame apStar
        if product != 'apStar' and np.isfinite(spec.frame_rv):
            assert r['rv_used'] == pytest.approx(o.rv_file, abs=0.5)
        assert abs(shift) < 0.05, (o.relpath, shift)


# --- operator construction: the numba kernel against the numpy reference ----------------------------------------------
from stellar_spectra.pipeline.resample import _smoothed_reference
import stellar_spectra.pipeline.resample as _rs


@pytest.mark.parametrize('name,wave,R,rv', CASES, ids=[c[0] for c in CASES])
def test_fast_operator_equals_reference(name, wave, R, rv):
    """The Resampler's operator equals the one built by the numpy reference, entry by entry (rows sum to 1: absolute
    2e-13)."""
    fast = Resampler(wave, GRID, R_native=R, rv=rv)
    saved = _rs.smoothed_overlap_matrix
    _rs.smoothed_overlap_matrix = _smoothed_reference
    try:
        ref = Resampler(wave, GRID, R_native=R, rv=rv)
    finally:
        _rs.smoothed_overlap_matrix = saved
    assert fast.sl == ref.sl and fast.A.shape == ref.A.shape
    assert abs(fast.A - ref.A).max() < 2e-13  # an entry at the 1e-13 floor may fall either side
    assert abs(fast.A.nnz - ref.A.nnz) <= 1e-4 * ref.A.nnz  # entries at the 1e-13 floor may fall either side
    assert (fast.A2 != fast.A.multiply(fast.A)).nnz == 0  # A∘A, built on demand


def test_fast_operator_on_stitched_cameras():
    """Two GALAH cameras stitched (a gap with phantom pixels): same operator, up to the reference's rounding noise in
    the gap."""
    w = np.r_[galah_wave(1), galah_wave(2)]
    fast = Resampler(w, GRID, R_native=GALAH_R, rv=12.0)
    saved = _rs.smoothed_overlap_matrix
    _rs.smoothed_overlap_matrix = _smoothed_reference
    try:
        ref = Resampler(w, GRID, R_native=GALAH_R, rv=12.0)
    finally:
        _rs.smoothed_overlap_matrix = saved
    # the reference's window reaches hundreds of sigma across the gap, where its four-term sum is cancellation noise <
    # 1e-12
    assert abs(fast.A - ref.A).max() < 1e-12
    f = synth.normalised_spectrum(w, HOT, GALAH_R, rv=12.0)
    iv = np.ones(len(w))
    for a, b in zip(fast(f, iv), ref(f, iv)):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_to_rest_grid_prebuilt_resampler(sky):
    """Operators built beforehand (one, a function of the velocity, one per camera) give what `to_rest_grid` builds
    itself."""
    from stellar_spectra.io.readers import read_spectrum

    root, obs, stars = sky
    for product in ('ccd1', 'uves'):
        o = obs[(obs['product'] == product) & (obs['anomaly'] == '')].iloc[0]
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            spec = read_spectrum(root / o.relpath)
        rv = float(stars.loc[o.star_index, 'rv'])
        ref = to_rest_grid(spec, GRID, rv=rv)
        for given in (ref['resampler'], lambda v, R: Resampler(spec.wave, GRID, R, v)):
            got = to_rest_grid(spec, GRID, rv=rv, resampler=given)
            for k in ('flux', 'ivar', 'bad', 'rv_used'):
                assert np.array_equal(got[k], ref[k]), (product, k)
        seg = spec.meta.get('segments', [])
        if (
            product == 'ccd1'
        ):  # GALAH: four cameras stitched, one operator each agrees with the stitched one to rounding
            assert len(seg) == 4
            cams = [Resampler(spec.wave[a:b], GRID, spec.R, ref['rv_used']) for _, a, b in seg]
            got = to_rest_grid(spec, GRID, rv=rv, resampler=cams)
            assert np.array_equal(got['bad'], ref['bad']) and got['resampler'] is cams
            np.testing.assert_allclose(got['flux'], ref['flux'], rtol=1e-12, atol=0)
            with pytest.raises(ValueError, match='native pixels'):
                to_rest_grid(spec, GRID, rv=rv, resampler=cams[:3])
