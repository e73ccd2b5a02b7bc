"""Masks on real-format data: the optical telluric bands on the real GALAH files, and the whole chain
(read -> flag_atmosphere -> to_rest_grid -> flags_on_grid -> loss_weights) on every spectrum of a tiny mock sky, checked
against its truth (telluric transmission, camera and chip layout, bad pixels); bad input gives clear errors."""

from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from stellar_spectra.formats import APOGEE_CHIPS, C_KMS
from stellar_spectra.pipeline.masks import (
    DEFAULT_WEIGHTS,
    OPTICAL_TELLURIC_BANDS,
    V_BC_MAX,
    flag_atmosphere,
    flags_on_grid,
    frame_scale,
    grid_flags,
    in_regions,
    loss_weights,
)
from stellar_spectra.mock.mocksky import generate_mock_sky
from stellar_spectra.io.readers import read_spectrum
from stellar_spectra.pipeline.resample import Resampler, common_grid, to_rest_grid
from stellar_spectra.spectrum import BAD, PixelFlag as P
from stellar_spectra.mock.synth import telluric_transmission

REAL = Path(__file__).resolve().parents[1] / '../shared/realdata/galah_dr3_format'
GRID = common_grid()
HOLE = int(P.NO_DATA | P.DETECTOR_GAP)


def has(f, bit):
    return (np.asarray(f) & int(bit)) != 0


@pytest.fixture(scope='module')
def sky(tmp_path_factory):
    "A tiny mock sky (3 APOGEE, 3 GALAH, 2 Gaia-ESO stars) and its observation truth."
    root = tmp_path_factory.mktemp('masks_sky')
    generate_mock_sky(root, n_stars=6, seed=1, n_workers=1, progress=False)
    return root, pd.read_parquet(root / 'truth' / 'observations.parquet')


def spectra(sky):
    "(spectrum, truth rows, barycentric rv) of every distinct mock file (GALAH: one stitched read per star)."
    root, obs = sky
    out, seen = [], set()
    for rel, rows in obs.groupby('relpath', sort=False):
        key = rel[:-6] if rows.survey.iloc[0] == 'galah' else rel
        if key in seen:
            continue
        seen.add(key)
        rows = obs[obs.relpath.str[:-6] == key] if rows.survey.iloc[0] == 'galah' else rows
        s = read_spectrum(root / rel)
        rv = float(rows.rv_file.iloc[0] + rows.bc.iloc[0]) if s.survey == 'ges' else None  # UVES files carry no rv
        out.append((s, rows, rv))
    return out


def on_grid(s, rv=None):
    with np.errstate(divide='ignore', invalid='ignore'):
        d = to_rest_grid(flag_atmosphere(s), GRID, rv)
    return d, flags_on_grid(GRID, d['resampler'], flag_atmosphere(s).flags, d['bad'])


# --- the real GALAH files -------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def real():
    if not REAL.is_dir():
        pytest.skip(f'real GALAH files not found at {REAL}')
    return next(iter(sorted(REAL.glob('*1.fits'))))


def test_real_galah_bands_in_its_cameras(real):
    s = flag_atmosphere(read_spectrum(real))
    assert s.frame == 'barycentric' and not np.isfinite(s.bc)  # GALAH states no barycentric correction: regions padded
    tell = has(s.flags, P.TELLURIC)
    pad = 1 + V_BC_MAX / C_KMS
    expected = np.zeros(len(s), bool)
    for lo, hi in OPTICAL_TELLURIC_BANDS:
        expected |= (s.wave >= lo / pad) & (s.wave <= hi * pad)
    np.testing.assert_array_equal(tell, expected)
    by_cam = {p: tell[a:b] for p, a, b in s.meta['segments']}
    wave = {p: s.wave[a:b] for p, a, b in s.meta['segments']}
    assert not by_cam['ccd1'].any()  # 4713–4902 Å: no band
    w2 = wave['ccd2'][by_cam['ccd2']]
    assert 5800 < w2.min() and w2.max() < 5813  # the weak O2 lines only
    h2o = (wave['ccd3'] > 6475) & (wave['ccd3'] < 6600)  # the H2O band from the start of the red camera
    assert by_cam['ccd3'][h2o].all() and not by_cam['ccd3'][wave['ccd3'] > 6610].any()
    o2a = (wave['ccd4'] > 7595.5) & (wave['ccd4'] < 7706)  # the O2 A band in the IR camera
    assert by_cam['ccd4'][o2a].all() and not by_cam['ccd4'][wave['ccd4'] > 7710].any()
    assert not ((s.wave > 6868) & (s.wave < 6940)).any()  # the B band falls between the red and IR cameras
    assert (
        has(s.flags, P.SKY_LINE).any() and (s.flags & ~int(P.TELLURIC | P.SKY_LINE) == read_spectrum(real).flags).all()
    )


def test_real_galah_rest_frame_moves_with_the_star(real):
    s0, s4 = flag_atmosphere(read_spectrum(real)), flag_atmosphere(read_spectrum(real, normalised=True))
    assert s4.frame == 'rest' and abs(s4.rv) > 5
    i = np.searchsorted(s0.wave, s4.wave * (1 + s4.rv / C_KMS) - 1e-3)  # each ext-4 pixel's ext-0 pixel
    np.testing.assert_allclose(s0.wave[i], s4.wave * (1 + s4.rv / C_KMS), rtol=1e-7)
    np.testing.assert_array_equal(has(s4.flags, P.TELLURIC), has(s0.flags[i], P.TELLURIC))
    np.testing.assert_array_equal(has(s4.flags, P.SKY_LINE), has(s0.flags[i], P.SKY_LINE))


# --- the mock sky ---------------------------------------------------------------------------------------------------


def test_flagged_tellurics_cover_the_truth(sky):
    n = 0
    for s, rows, _ in spectra(sky):
        if s.survey == 'apogee':
            continue
        f = flag_atmosphere(s)
        tell = has(f.flags, P.TELLURIC)
        segs = s.meta.get('segments') or [(s.product, 0, len(s))]
        t = np.ones(len(s))
        for (_, a, b), (_, o) in zip(segs, rows.sort_values('ccd').iterrows()):
            t[a:b] = telluric_transmission(s.wave[a:b] * o.tell_factor, airmass=o.airmass, pwv=o.pwv)
        assert tell[t < 0.8].all(), s
        assert tell[t < 0.95].mean() > 0.9, s
        n += (t < 0.8).sum()
    assert n > 300


def test_apogee_keeps_its_own_bits(sky):
    for s, _, _ in spectra(sky):
        if s.survey != 'apogee':
            continue
        f = flag_atmosphere(s)
        np.testing.assert_array_equal(f.flags, s.flags)
        assert f.flags is not s.flags
        assert has(s.flags, P.TELLURIC).any() or s.product == 'apStar'


def test_gaps_and_coverage_on_the_grid(sky):
    gw = GRID.wave
    for s, _, rv in spectra(sky):
        d, fl = on_grid(s, rv)
        z = 1 + d['rv_used'] / C_KMS
        nd = has(fl, P.NO_DATA)
        lo, hi = np.flatnonzero(~nd)[[0, -1]]
        assert nd[:lo].all() and nd[hi + 1 :].all() and not nd[lo : hi + 1].any()  # NO_DATA exactly beyond the coverage
        assert gw[lo] > s.wave[0] / z - 1 and gw[hi] < s.wave[-1] / z + 1
        if s.survey == 'galah':
            ends = [(s.wave[a] / z, s.wave[b - 1] / z) for _, a, b in s.meta['segments']]
        elif s.product == 'apStar':
            ends = [(s.wave[a], s.wave[b - 1]) for a, b in sorted(APOGEE_CHIPS.values())]
        else:  # apVisit: chips where the wavelength jumps; UVES: the reader's NO_DATA between the CCDs
            cut = (
                np.flatnonzero(
                    (np.diff(s.wave) > 10 * np.median(np.diff(s.wave))) | (np.diff(has(s.flags, P.NO_DATA)) != 0)
                )
                + 1
            )
            edges = np.r_[0, cut, len(s)]
            ends = [
                (s.wave[a] / z, s.wave[b - 1] / z)
                for a, b in zip(edges[:-1], edges[1:])
                if not has(s.flags[a], P.NO_DATA)
            ]
        assert len(ends) == {'galah': 4, 'apogee': 3, 'ges': 2}[s.survey], (s, ends)
        for (_, e1), (s2, _) in zip(ends[:-1], ends[1:]):
            assert has(fl[(gw > e1 + 0.5) & (gw < s2 - 0.5)], P.DETECTOR_GAP).all(), s
        inside = np.any([(gw > a + 0.5) & (gw < b - 0.5) for a, b in ends], 0)
        assert not has(fl[inside], HOLE).any(), s
        assert has(fl[d['bad']], BAD).all()  # every pixel the resampler refused carries a bad bit
        w = loss_weights(fl, d['ivar'])
        assert (w[d['bad'] | (d['ivar'] <= 0) | has(fl, BAD)] == 0).all() and (w > 0).sum() > 1000


def test_bad_pixels_never_get_weight(sky):
    root, obs = sky
    s = read_spectrum(root / obs[obs.survey == 'galah'].relpath.iloc[0])
    f = s.flags.copy()
    f[2000:2006] |= P.BAD_PIXEL
    f[9000] |= P.COSMIC_RAY  # as a survey would flag them
    iv = s.ivar.copy()
    iv[500:503] = 0  # and pixels without information (the constructor flags them BAD_ERROR)
    s = type(s)(
        s.wave,
        s.flux,
        iv,
        flags=f,
        **{k: getattr(s, k) for k in ('frame', 'R', 'survey', 'product', 'rv', 'bc', 'meta')},
    )
    with np.errstate(divide='ignore', invalid='ignore'):
        d = to_rest_grid(s, GRID)
    r = d['resampler']
    fl = flags_on_grid(GRID, r, s.flags, d['bad'])
    w = loss_weights(fl, d['ivar'])
    for idx in (np.arange(2000, 2006), [9000], np.arange(500, 503)):
        touched = np.zeros(len(s))
        touched[idx] = 1
        share = np.zeros(GRID.n)
        share[r.sl] = (r.A @ touched) / np.asarray(r.A.sum(1)).ravel().clip(1e-30)
        assert (w[share >= 0.1] == 0).all()  # 0.1: grid_flags' min_weight
        assert (share >= 0.1).any() == (
            len(idx) > 1
        )  # one GALAH pixel is < 10 % of any grid pixel: it is only left out
    s.flux[2000:2006] = s.flux[9000] = s.flux[500:503] = (
        1e9  # whatever a bad pixel holds never reaches a weighted pixel
    )
    with np.errstate(divide='ignore', invalid='ignore'):
        d2 = to_rest_grid(s, GRID)
    np.testing.assert_array_equal(d2['flux'][w > 0], d['flux'][w > 0])


def test_weights_of_bits_multiply():
    f = np.array(
        [[0, P.PERSISTENCE, P.SUSPECT, P.PERSISTENCE | P.SUSPECT, P.SKY_LINE | P.SUSPECT, P.DETECTOR_GAP]], np.int32
    )
    iv = np.ones(f.shape)
    np.testing.assert_array_equal(loss_weights(f, iv), [[1, 0.5, 0.5, 0.25, 0, 0]])
    w = loss_weights(f, iv, {P.PERSISTENCE: 0.8, P.SUSPECT: 0.5, P.SKY_LINE: 0.5})
    np.testing.assert_allclose(w, [[1, 0.8, 0.5, 0.4, 0.25, 0]], rtol=1e-6)
    assert DEFAULT_WEIGHTS[P.TELLURIC] == 0 and w.dtype == np.float32
    assert (loss_weights(f, np.zeros(f.shape)) == 0).all() and (loss_weights(f, np.full(f.shape, np.nan)) == 0).all()


def test_batches_equal_single_spectra(sky):
    root, obs = sky
    s = read_spectrum(root / obs[obs['product'] == 'apStar'].relpath.iloc[0])
    r = Resampler(s.wave, GRID, s.R, 0.0)
    f2 = np.stack([s.flags, s.flags | np.where(np.arange(len(s)) % 97 == 0, int(P.SUSPECT), 0).astype(np.int32)])
    _, _, bad = r(np.stack([s.flux, s.flux]), np.stack([s.ivar, s.ivar]), np.stack([s.mask, s.mask]))
    both = flags_on_grid(GRID, r, f2, bad)
    for k in range(2):
        np.testing.assert_array_equal(both[k], flags_on_grid(GRID, r, f2[k], bad[k]))
        np.testing.assert_array_equal(grid_flags(r, f2)[k], grid_flags(r, f2[k]))


# --- bad input ------------------------------------------------------------------------------------------------------


def test_bad_input_gets_a_clear_error(sky):
    root, obs = sky
    s = read_spectrum(root / obs[obs['product'] == 'apStar'].relpath.iloc[0])
    r = Resampler(s.wave, GRID, s.R, 0.0)
    bad = np.zeros(GRID.n, bool)
    with pytest.raises(ValueError, match=r'flags have shape \(8574,\).*8575 native pixels'):
        flags_on_grid(GRID, r, s.flags[:-1], bad)
    with pytest.raises(ValueError, match='flags have shape'):
        grid_flags(r, s.flags[None, None])
    with pytest.raises(TypeError, match='must be integers'):
        grid_flags(r, s.flags.astype(float))
    other = common_grid(R=20_000)
    with pytest.raises(ValueError, match='the resampler maps onto .* not onto'):
        flags_on_grid(other, r, s.flags, np.zeros(other.n, bool))
    with pytest.raises(ValueError, match='bad has shape'):
        flags_on_grid(GRID, r, s.flags, np.zeros(12, bool))
    with pytest.raises(ValueError, match='differ in shape'):
        loss_weights(np.zeros(5, np.int32), np.ones(4))
    with pytest.raises(ValueError, match='bad bit'):
        loss_weights(np.zeros(5, np.int32), np.ones(5), {P.NO_DATA: 1.0})
    with pytest.raises(ValueError, match='min_weight'):
        grid_flags(r, s.flags, min_weight=1.5)
    g = read_spectrum(root / obs[obs.survey == 'galah'].relpath.iloc[0], normalised=True)
    g.rv = np.nan
    with pytest.raises(ValueError, match='without rv'):
        flag_atmosphere(g)


def test_in_regions_and_frame_scale_edges():
    from stellar_spectra.spectrum import Spectrum

    w = np.linspace(6000, 7000, 1001)
    np.testing.assert_array_equal(
        in_regions(w, [6100, 6050], [6200, 6150]), (w >= 6050) & (w <= 6200)
    )  # overlaps need no merging
    like = lambda frame, bc=5.0: Spectrum(w[:3], np.ones(3), np.ones(3), frame=frame, rv=10.0, bc=bc)
    assert frame_scale(like('observed')) == (1.0, 0.0)
    assert frame_scale(like('barycentric', np.nan)) == (1.0, V_BC_MAX)
    np.testing.assert_allclose(frame_scale(like('rest'))[0], (1 + 5 / C_KMS) / (1 + 10 / C_KMS))
