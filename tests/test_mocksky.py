"""Integration tests of the mock sky: the files match the survey formats (and the real GALAH files), lines sit
where the truth puts them, noise matches the stated errors, surveys agree with each other, generation is
deterministic and independent of the number of workers, and the fast generator writes exactly the files of the
reference synthesis and of astropy's writers."""

import filecmp, io, tarfile, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest
from astropy.io import fits
from scipy.ndimage import gaussian_filter1d
from stellar_spectra.formats import (
    C_KMS,
    APOGEE_PIXMASK,
    APOGEE_BAD_PIXMASK,
    APOGEE_NWAVE,
    GALAH_EXTNAMES,
    UCD_AIR,
    apogee_wavelength,
    apogee_chip_mask,
    linear_wavelength,
)
from stellar_spectra.linelist import air_to_vacuum, vacuum_to_air
from stellar_spectra.formats import sigma_lnlam as instrumental_sigma_lnlam
from stellar_spectra.mock.mocksky import generate_mock_sky
from stellar_spectra.mock.instrument import baseline
from stellar_spectra.mock.instrument import model_flux, truth_spectrum
from stellar_spectra.mock import instrument, synth

REAL = Path(__file__).resolve().parents[2] / 'shared' / 'realdata' / 'galah_dr3_format'
N_STARS, SEED = 14, 7


@pytest.fixture(scope='module')
def sky(tmp_path_factory):
    out = tmp_path_factory.mktemp('sky')
    summary = generate_mock_sky(out, n_stars=N_STARS, seed=SEED, progress=False)
    stars = pd.read_parquet(out / 'truth' / 'stars.parquet').set_index('star_index', drop=False)
    obs = pd.read_parquet(out / 'truth' / 'observations.parquet')
    return out, summary, stars, obs


def star_of(stars, o):
    return stars.loc[o['star_index']].to_dict()


# ---------------------------------------------------------------- layout and formats
def test_layout(sky):
    out, summary, stars, obs = sky
    for rel in [
        'sdss/dr17/apogee/spectro/aspcap/dr17/synspec_rev1/allStar-dr17-synspec_rev1.fits',
        'galah/GALAH_DR3/GALAH_DR3_main_allstar_v2.fits',
        'gaiaeso/GES_DR4_catalogue.fits',
        'gaiaeso/eso_archive_query.csv',
        'truth/stars.parquet',
        'truth/observations.parquet',
        'truth/meta.json',
    ]:
        assert (out / rel).is_file(), rel
    assert all((out / r).is_file() for r in obs['relpath'])
    assert not list(out.rglob('*.part'))  # no temporary files left
    assert summary['n_stars'] == N_STARS and summary['files']['apStar'] == stars['in_apogee'].sum()
    galah = set(Path(r).name for r in obs.loc[obs.survey == 'galah', 'relpath'])
    in_tars = set()
    for t in (out / 'galah/GALAH_DR3/spectra/tar_files').glob('*_com.tar.gz'):
        with tarfile.open(t) as tf:
            in_tars |= {Path(m).name for m in tf.getnames()}
    assert in_tars == galah
    csv = pd.read_csv(out / 'gaiaeso/eso_archive_query.csv')
    assert set(csv['ARCFILE']) == set(Path(r).name for r in obs.loc[obs.survey == 'ges', 'relpath'])
    assert set(csv['CNAME']) == set(stars.loc[stars.in_ges, 'cname'])


def test_catalogues(sky):
    out, _, stars, _ = sky
    a = fits.getdata(out / 'sdss/dr17/apogee/spectro/aspcap/dr17/synspec_rev1/allStar-dr17-synspec_rev1.fits', 1)
    assert a['GAIAEDR3_SOURCE_ID'].dtype.kind == 'i' and a['GAIAEDR3_SOURCE_ID'].dtype.itemsize == 8
    assert a['SNR'].dtype.itemsize == 4 and a['RA'].dtype.itemsize == 8 and a['NVISITS'].dtype.itemsize == 4
    assert set(a['APOGEE_ID']) == set(stars.loc[stars.in_apogee, 'apogee_id'])
    g = fits.getdata(out / 'galah/GALAH_DR3/GALAH_DR3_main_allstar_v2.fits', 1)
    assert {'sobject_id', 'star_id', 'dr3_source_id', 'ra_dr2', 'dec_dr2', 'flag_sp', 'snr_c4_iraf'} <= set(g.names)
    e = fits.getdata(out / 'gaiaeso/GES_DR4_catalogue.fits', 1)
    assert {'CNAME', 'OBJECT', 'GES_FLD', 'RA', 'DEC', 'TEFF', 'VRAD', 'SETUP'} <= set(e.names)


def test_apstar_format(sky):
    out, _, stars, obs = sky
    for rel, grp in obs[obs['product'] == 'apStar'].groupby('relpath'):
        nv = len(grp)
        with fits.open(out / rel) as f:
            assert len(f) == 11 and all('EXTNAME' not in h.header for h in f)
            R = nv + 2 if nv > 1 else 2
            for i, dt in zip(range(1, 8), ['>f8', '>f8', '>i8', '>f8', '>f8', '>f8', '>f8']):
                assert f[i].data.dtype.str == dt and f[i].data.shape == (R, APOGEE_NWAVE), (rel, i)
            assert f[8].data is None and len(f[9].data) == nv and len(f[10].data) == 1
            h = f[0].header
            assert h['NVISITS'] == nv and h['CTYPE1'] == 'LOG-LINEAR' and h['CRVAL1'] == 4.179 and h['CDELT1'] == 6e-6
            for n in range(1, nv + 1):
                assert {f'SFILE{n}', f'JD{n}', f'VHELIO{n}', f'BC{n}', f'SNRVIS{n}'} <= set(h)
            flux, err, mask = f[1].data, f[2].data, f[3].data
            if nv > 1:
                assert (mask[0] == np.bitwise_and.reduce(mask[2:], axis=0)).all()
            else:
                assert (flux[1] == 0).all()
            bad = (mask[2:] if nv > 1 else mask[:1]) & 1 << APOGEE_PIXMASK['BADPIX'] > 0
            assert bad.any() and (err[2:] if nv > 1 else err[:1])[bad].min() == 1e10
            assert (flux[0][~apogee_chip_mask()] == 0).all()


def test_apvisit_format(sky):
    out, _, stars, obs = sky
    for _, o in obs[obs['product'] == 'apVisit'].iterrows():
        with fits.open(out / o['relpath']) as f:
            assert len(f) == 12
            for i, dt in [(1, '>f4'), (2, '>f4'), (3, '>i2'), (4, '>f8'), (5, '>f4'), (8, '>f4')]:
                assert f[i].data.dtype.str == dt and f[i].data.shape == (3, 4096)
            assert f[9].data.shape == (3, 14) and f[10].data.shape == (3, 26)
            w = f[4].data
            assert (np.diff(w, axis=1) < 0).all() and w[0].min() > w[1].max() > w[2].max()  # row 0 red, decreasing
            t = f[11].data
            assert np.isclose(t['VHELIO'][0], t['VREL'][0] + t['BC'][0], atol=1e-3)
            assert 'VHELIO' not in f[0].header and f[0].header['TELESCOP'] in ('apo25m', 'lco25m')
            tell, m = f[7].data.ravel(), f[3].data.ravel().astype(np.int64)
            from scipy.ndimage import uniform_filter1d

            low = uniform_filter1d(tell, 5) < 0.9
            assert ((m[low] >> APOGEE_PIXMASK['SIG_TELLURIC']) & 1).all()


def _keys(h):
    return [k for k in h.keys() if k not in ('', 'COMMENT', 'CONTINUE')]


def test_galah_matches_real_files(sky):
    out, _, stars, obs = sky
    for _, o in obs[obs.survey == 'galah'].iterrows():
        ccd = int(o['ccd'])
        with fits.open(out / o['relpath']) as m, fits.open(REAL / f'140207001201005{ccd}.fits') as r:
            assert len(m) == (5 if o['has_ext4'] else 4)
            for i in range(len(m)):
                assert sorted(_keys(m[i].header)) == sorted(_keys(r[i].header)), (o['relpath'], i)
                assert m[i].data.dtype == r[i].data.dtype
                assert m[i].header.get('EXTNAME') == (GALAH_EXTNAMES[i] if 0 < i < 4 else None)
                for k in _keys(r[i].header):
                    assert type(m[i].header[k]) is type(r[i].header[k]), (k, i)
            h0 = m[0].header
            assert h0['CTYPE1'] == 'LINEAR' and h0['CUNIT1'] == 'Angstroms' and h0['INSTRUME'] == 'HERMES-2dF'
            np.testing.assert_allclose(m[0].data * m[1].data, m[0].data * m[1].data)  # sigma = ext0 * ext1 is defined
            if o['has_ext4']:
                h4 = m[4].header
                v = o['rv_file'] + (0 if o['anomaly'] != 'sb2' else 0)
                cut = APOGEE_NWAVE and (4096 - m[4].data.size)
                assert (
                    np.isclose(
                        h4['CDELT1'],
                        h0['CDELT1']
                        / (
                            1
                            + (
                                stars.loc[o.star_index, 'rv']
                                if o['anomaly'] != 'sb2'
                                else h4['CDELT1'] * 0 + (h0['CDELT1'] / h4['CDELT1'] - 1) * C_KMS
                            )
                            / C_KMS
                        ),
                        rtol=1e-6,
                    )
                    or o['anomaly'] == 'sb2'
                )
                if ccd == 4:
                    assert 7690 < h4['CRVAL1'] < 7700 and m[4].data.size < 2700
                else:
                    assert m[4].data.size == 4096


def test_uves_format(sky):
    out, _, stars, obs = sky
    for _, o in obs[obs.survey == 'ges'].iterrows():
        assert Path(o['relpath']).name.startswith('ADP.')
        with fits.open(out / o['relpath']) as f:
            h = f[0].header
            for k in [
                'PRODCATG',
                'ORIGIN',
                'TELESCOP',
                'INSTRUME',
                'OBJECT',
                'RA',
                'DEC',
                'EQUINOX',
                'RADESYS',
                'SPECSYS',
                'MJD-OBS',
                'EXPTIME',
                'PROG_ID',
                'CONTNORM',
                'WAVELMIN',
                'WAVELMAX',
                'SPEC_BIN',
                'SPEC_RES',
                'SNR',
            ]:
                assert k in h, k
            assert h['ORIGIN'] == 'ESO' and h['INSTRUME'] == 'UVES' and h['PRODCATG'] == 'SCIENCE.SPECTRUM'
            t = f[1]
            assert t.header['EXTNAME'] == 'SPECTRUM' and len(t.data) == 1 and t.header['TUCD1'] == UCD_AIR
            wave = t.data['WAVE'][0]
            assert (
                t.header['TUNIT1'] == 'nm'
                and np.isclose(wave[0], h['WAVELMIN'])
                and np.isclose(wave[-1], h['WAVELMAX'])
            )
            assert 400 < wave[0] < 500 and 600 < wave[-1] < 700
            mid = (wave > wave[0] + 0.45 * (wave[-1] - wave[0])) & (wave < wave[0] + 0.55 * (wave[-1] - wave[0]))
            gap = t.data['QUAL'][0] > 0 if o['has_qual'] else t.data['ERR_REDUCED'][0] == 0
            assert 'QUAL' in t.columns.names or not o['has_qual']
            assert gap[mid].any() and (t.data['FLUX_REDUCED'][0][gap & mid] == 0).all()  # the CCD gap near the centre


# ---------------------------------------------------------------- physics: noise, lines, cross-survey
def _file_spectra(out, o):
    "(vacuum file-frame wavelengths, flux, err, good) of one observation row."
    with fits.open(out / o['relpath']) as f:
        if o['product'] == 'apVisit':
            w, fl, e = f[4].data.ravel(), f[1].data.ravel().astype(float), f[2].data.ravel().astype(float)
            good = (f[3].data.ravel().astype(np.int64) & APOGEE_BAD_PIXMASK) == 0
        elif o['product'] == 'apStar':
            w, fl, e = apogee_wavelength(), f[1].data[int(o['row'])], f[2].data[int(o['row'])]
            good = ((f[3].data[int(o['row'])] & APOGEE_BAD_PIXMASK) == 0) & apogee_chip_mask()
        elif o['survey'] == 'galah':
            h = f[0].header
            w = air_to_vacuum(linear_wavelength(h['CRVAL1'], h['CDELT1'], h['NAXIS1'], h['CRPIX1']))
            fl = f[0].data.astype(float)
            e = fl * f[1].data
            good = np.ones(fl.size, bool)
        else:
            t = f[1].data
            w, fl, e = air_to_vacuum(t['WAVE'][0] * 10), t['FLUX_REDUCED'][0], t['ERR_REDUCED'][0]
            good = t['QUAL'][0] == 0 if 'QUAL' in t.names else np.ones(len(w), bool)
    good &= (e > 0) & (e < 1e9)
    if o['fault'] == 'bad_stretch':
        good[int(o['fault_lo']) : int(o['fault_hi'])] = False
    return w, fl, e, good


@pytest.mark.parametrize('survey', ['apVisit', 'apStar', 'galah', 'ges'])
def test_noise_matches_errors(sky, survey):
    out, _, stars, obs = sky
    sel = obs[(obs['product'] == survey) | (obs.survey == survey)]
    sel = sel[sel.fault != 'wrong_wavelength']
    pulls = []
    for _, o in sel.iterrows():
        w, fl, e, good = _file_spectra(out, o)
        model = model_flux(star_of(stars, o), o.to_dict(), w)
        p = (fl - model)[good] / e[good]  # the good pixels only: a zero error elsewhere
        pulls.append(p[np.abs(p) < 6])  # cosmic rays left in the flux (GALAH does not flag them)
    p = np.concatenate(pulls)
    assert p.size > 5000 and abs(p.mean()) < 0.03 and abs(p.std() - 1) < 0.03, (survey, p.mean(), p.std())


def _centroid(w, depth, w0, half):
    sel = np.abs(w - w0) < half
    d = np.clip(depth[sel], 0, None)
    return (w[sel] * d).sum() / d.sum() if d.sum() > 0 else np.nan


def _line_offsets(out, stars, o, lines, expect_kms=0.0):
    "Measured minus predicted line positions (km/s) in one file, in the file's own wavelength convention."
    w, fl, e, good = _file_spectra(out, o)
    s = star_of(stars, o)
    norm = np.where(good, fl / baseline(s, o.to_dict(), w), 1.0)
    air = o['survey'] in ('galah', 'ges')
    w_file = vacuum_to_air(w) if air else w
    dv = []
    for lv in lines:
        pred_vac = lv * (1 + o['rv_file'] / C_KMS)
        pred = float(vacuum_to_air(np.array([pred_vac]))[0]) if air else pred_vac
        if not (w_file.min() + 2 < pred < w_file.max() - 2):
            continue
        half = pred * 2.5 / o['R']
        c = _centroid(w_file, 1 - norm, pred * (1 + expect_kms / C_KMS), half)
        if np.isfinite(c):
            dv.append((c - pred) / pred * C_KMS)
    return np.array(dv)


def _lines(t):
    return np.asarray(t['wave_vac'] if hasattr(t, 'colnames') else t, float)


def test_lines_at_predicted_wavelengths(sky):
    from stellar_spectra.linelist import reference_lines

    out, _, stars, obs = sky
    ok = obs[((obs['product'] == 'apVisit') | (obs.survey == 'galah')) & (obs.anomaly.isin(['', 'chem_peculiar']))]
    checked = 0
    for _, o in ok.iterrows():
        lines = _lines(reference_lines(o['wmin'] - 5, o['wmax'] + 5))
        dv = _line_offsets(out, stars, o, lines)
        if len(dv) < 5:
            continue
        checked += 1
        assert abs(np.median(dv)) < 1.0, (o['relpath'], np.median(dv))  # km/s; air/vacuum confusion would be ~80 km/s
    assert checked >= 5


def test_wrong_wavelength_fault_is_visible(sky):
    from stellar_spectra.linelist import reference_lines

    out, _, stars, obs = sky
    bad = obs[obs.fault == 'wrong_wavelength']
    for _, o in bad.iterrows():
        if o['product'] not in ('apVisit', 'ccd2', 'uves'):
            continue
        lines = _lines(reference_lines(o['wmin'] - 5, o['wmax'] + 5))
        dv = _line_offsets(out, stars, o, lines, expect_kms=o['fault_shift_kms'])
        if len(dv) >= 2:
            assert abs(np.median(dv) - o['fault_shift_kms']) < 5


def test_galah_and_uves_agree(sky):
    out, _, stars, obs = sky
    both = [
        i
        for i in stars.index[
            stars.in_galah & stars.in_ges & ~stars.anomaly.isin(['sb2', 'bad_stretch', 'wrong_wavelength'])
        ]
    ]
    assert both, 'the test sky should hold a star observed by GALAH and Gaia-ESO'
    for i in both:
        g = obs[(obs.star_index == i) & (obs['product'] == 'ccd1')].iloc[0]
        u = obs[(obs.star_index == i) & (obs.survey == 'ges')].iloc[0]
        wg, fg, eg, okg = _file_spectra(out, g)
        wu, fu, eu, oku = _file_spectra(out, u)
        rest_g, rest_u = wg / (1 + g['rv_file'] / C_KMS), wu / (1 + u['rv_file'] / C_KMS)
        # degrade UVES to GALAH's resolution on a uniform ln-lambda grid, then interpolate onto GALAH's pixels
        sel = oku & (rest_u > rest_g[0] - 5) & (rest_u < rest_g[-1] + 5)
        lg = np.linspace(np.log(rest_u[sel][0]), np.log(rest_u[sel][-1]), sel.sum())
        fu_l = np.interp(lg, np.log(rest_u[sel]), fu[sel])
        sig = np.sqrt(instrumental_sigma_lnlam(28_000) ** 2 - instrumental_sigma_lnlam(47_000) ** 2) / (lg[1] - lg[0])
        fu_g = np.interp(rest_g, np.exp(lg), gaussian_filter1d(fu_l, sig))

        def normalise(w, f):
            keep = np.ones(w.size, bool)
            for _ in range(5):
                c = np.polyval(np.polyfit(w[keep] - w.mean(), f[keep], 3), w - w.mean())
                keep = f > c * 0.98
            return f / c

        m = okg & (fg / eg > 0)
        a, b = normalise(rest_g[m], fg[m]), normalise(rest_g[m], fu_g[m])
        rms = lambda x: np.sqrt(np.mean(x**2))
        expected = np.hypot(rms(eg[m] / fg[m]), rms(eu[sel] / fu[sel]))  # the UVES part is an upper bound (smoothed)
        d = a - b
        robust = 1.4826 * np.median(np.abs(d - np.median(d)))  # unflagged cosmic rays (GALAH, UVES without QUAL)
        assert abs(np.median(d)) < 0.01 and robust < 1.2 * expected, (robust, expected)
        depth = 1 - a
        if depth.std() > 3 * expected:
            assert np.corrcoef(a, b)[0, 1] > 0.8  # lines stronger than the noise agree


def test_truth_spectrum_sb2(sky):
    _, _, stars, _ = sky
    s = stars[stars.anomaly == 'sb2'].iloc[0].to_dict()
    w = np.linspace(15200, 15300, 2000)
    single = dict(s, anomaly='')
    a, b = truth_spectrum(s, w, 22500, mjd=s['sb2_t0'] + s['sb2_period'] / 4), truth_spectrum(single, w, 22500)
    assert np.abs(a - b).max() > 1e-3 and (a <= 1 + 1e-9).all()


# ---------------------------------------------------------------- determinism
def test_deterministic_and_worker_independent(tmp_path):
    a = generate_mock_sky(tmp_path / 'a', n_stars=6, seed=3, progress=False)
    b = generate_mock_sky(tmp_path / 'b', n_stars=6, seed=3, n_workers=2, progress=False)
    fa = sorted(p.relative_to(tmp_path / 'a') for p in (tmp_path / 'a').rglob('*') if p.is_file())
    fb = sorted(p.relative_to(tmp_path / 'b') for p in (tmp_path / 'b').rglob('*') if p.is_file())
    assert fa == fb and len(fa) > 10
    for r in fa:
        assert filecmp.cmp(tmp_path / 'a' / r, tmp_path / 'b' / r, shallow=False), r
    assert a['files'] == b['files']


# ---------------------------------------------------------------- the fast generator against the reference
# The generator caches a star's line quantities, blends and spectra, evaluates the blends' profiles once, sorts the
# telluric and sky lines once, and writes FITS bytes itself. The reference below is the synthesis as it was before
# (issue #15): every spectrum computed afresh from the lines in its window, five full profile sums per blend, argsorts
# on every call. The physics functions it calls (strengths, depths, widths, profile sums) are the package's own.
def _ref_deblend(lnw, ew, sigma, gamma):
    w = np.maximum(ew, 0.0)
    pts = np.sort(np.concatenate([lnw, (lnw[1:] + lnw[:-1]) / 2]))
    for _ in range(5):
        s = synth._profile_sum(pts, lnw, w, sigma, gamma)
        mid = np.concatenate([[0.0], s[1::2], [0.0]])
        s = np.maximum(s[::2], np.maximum(mid[1:], mid[:-1]))
        w = w * (1 + (s / 0.95) ** 16) ** (-1 / 16)
    return np.where(ew > 0, w, ew)


def _ref_normalised_spectrum(wave, params, R, rv=0.0):
    wave = np.asarray(wave, float)
    shape = wave.shape
    x = np.log(wave.ravel()) - np.log1p(rv / C_KMS)
    order = np.argsort(x)
    xs = x[order]
    lines = synth._line_columns()
    i, j = np.searchsorted(lines['lnw'], [xs[0] - 0.06, xs[-1] + 0.06])
    c = {k: v[i:j] for k, v in lines.items()}
    strength = synth._strength(params, c)
    d = synth._depth(params, c, strength)
    (sig_loc, sig_star), gam = synth._widths(params, c['mass'], strength), synth._gamma(params, c['gamma'], c['group'])
    on = np.abs(d) > 1e-5
    lnw, sig_loc, sig_star, gam = c['lnw'][on], sig_loc[on], sig_star[on], gam[on]
    from scipy.special import voigt_profile

    w = _ref_deblend(lnw, d[on] / voigt_profile(0.0, sig_loc, gam), sig_star, gam)
    flux = np.empty_like(x)
    flux[order] = 1 - synth._profile_sum(xs, lnw, w, np.sqrt(sig_star**2 + instrumental_sigma_lnlam(R) ** 2), gam)
    return flux.reshape(shape)


def _ref_gauss_peaks(x, centre, peak, sigma=synth.TELLURIC_SIGMA):
    order = np.argsort(x)
    out = np.empty(len(x))
    srt = np.argsort(centre)
    out[order] = synth._profile_sum(
        x[order], centre[srt], peak[srt] * sigma * np.sqrt(2 * np.pi), np.full(len(centre), sigma)
    )
    return out


def _ref_telluric(wave, airmass=1.0, pwv=2.0):
    wave = np.asarray(wave, float)
    x = np.log(wave.ravel())
    t = synth._telluric_lines()
    return np.exp(-airmass * (_ref_gauss_peaks(x, *t['dry']) + pwv / 2.0 * _ref_gauss_peaks(x, *t['wet']))).reshape(
        wave.shape
    )


def _ref_sky(wave, strength=1.0):
    wave = np.asarray(wave, float)
    return (strength * (0.003 + _ref_gauss_peaks(np.log(wave.ravel()), *synth._sky_lines()))).reshape(wave.shape)


def test_spectra_equal_reference_synthesis(sky, tmp_path, monkeypatch):
    """Exact: the same stars written with the reference synthesis give the same files, byte for byte (spectra, truth,
    tarballs)."""
    out = sky[0]
    monkeypatch.setattr(instrument, 'normalised_spectrum', _ref_normalised_spectrum)
    monkeypatch.setattr(instrument, 'telluric_transmission', _ref_telluric)
    monkeypatch.setattr(instrument, 'sky_emission', _ref_sky)
    generate_mock_sky(tmp_path / 'ref', n_stars=N_STARS, seed=SEED, progress=False)
    files = sorted(p.relative_to(out) for p in out.rglob('*') if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / 'ref') for p in (tmp_path / 'ref').rglob('*') if p.is_file())
    assert {'sb2', 'bad_stretch', 'wrong_wavelength'} & set(sky[2].anomaly) and len(files) > 50
    for r in files:
        assert filecmp.cmp(out / r, tmp_path / 'ref' / r, shallow=False), r


def _hdu_bytes(raw):
    "(header cards, data bytes) of each HDU of a FITS file."
    out, pos = [], 0
    while pos < len(raw):
        cards = []
        while True:
            c = raw[pos : pos + 80].decode()
            pos += 80
            cards.append(c)
            if c.startswith('END     '):
                break
        pos += -pos % 2880
        kv = {c[:8].strip(): c[10:].split('/')[0].strip() for c in cards if c[8:10] == '= '}
        shape = [int(kv[f'NAXIS{j}']) for j in range(1, int(kv['NAXIS']) + 1)]
        n = abs(int(kv['BITPIX'])) // 8 * int(np.prod(shape)) if shape else 0
        out.append((cards, raw[pos : pos + n]))
        pos += n + (-n % 2880)
    return out


def test_files_are_what_astropy_writes(sky):
    """Exact: every spectrum file, read by astropy and written back by astropy, is the same bytes (the UVES primary
    header has no EXTEND, which astropy adds)."""
    out, _, _, obs = sky
    for rel in sorted(set(obs['relpath'])):
        raw = (out / rel).read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with fits.open(io.BytesIO(raw)) as f:
                buf = io.BytesIO()
                f.writeto(buf)
        mine, theirs = _hdu_bytes(raw), _hdu_bytes(buf.getvalue())
        if rel.startswith('gaiaeso/'):
            theirs[0] = ([c for c in theirs[0][0] if not c.startswith('EXTEND  ')], theirs[0][1])
        assert mine == theirs, rel
    for t in (out / 'galah/GALAH_DR3/spectra/tar_files').glob('*_com.tar.gz'):  # the tarballs hold the camera files
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                assert tf.extractfile(m).read() == (out / 'galah/GALAH_DR3/spectra' / Path(m.name).name).read_bytes(), (
                    m.name
                )
