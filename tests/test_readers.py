"""Readers: tiny fixture files written with astropy per formats.md, the real GALAH DR3 files, broken files, and a mock
sky whose truth the readers must recover."""

import json, os, pickle, shutil, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table
from stellar_spectra.formats import (
    APOGEE_CRVAL1,
    APOGEE_CDELT1,
    APOGEE_NWAVE,
    APOGEE_CHIPS,
    APOGEE_PIXMASK,
    GALAH_COVERAGE,
    GALAH_DISPERSION,
    C_KMS,
    UCD_AIR,
    UCD_VACUUM,
    apogee_wavelength,
    linear_wavelength,
)
from stellar_spectra.linelist import air_to_vacuum
from stellar_spectra.spectrum import Spectrum, PixelFlag, flag_spikes
from stellar_spectra.io.fitsfile import SpectrumReadError, ReaderWarning, identify
from stellar_spectra.io.readers import read_spectrum, read_many, read_allstar, read_galah_catalogue, read_ges_catalogue
from stellar_spectra.io.apogee import read_apstar, read_apstar_visits, read_apvisit
from stellar_spectra.io.optical import read_galah, read_uves

REAL = Path(__file__).resolve().parents[1] / '../shared/realdata/galah_dr3_format'
SID = 140207001201005


def n_fds():
    return len(os.listdir('/proc/self/fd'))


# ---------------------------------------------------------------- fixture writers (formats.md, to the letter)
def write_apstar(path, nvis=2, seed=0):
    "apStar: HDU 0 header, 1-3 flux/err/mask (R, 8575), 4-7 sky/telluric, 8 empty, 9 visit table, 10 combined table."
    rng = np.random.default_rng(seed)
    R = nvis + 2 if nvis > 1 else 2
    flux = 1 + 0.01 * rng.normal(size=(R, APOGEE_NWAVE))
    err = np.full((R, APOGEE_NWAVE), 0.01)
    mask = np.zeros((R, APOGEE_NWAVE), np.int64)
    on = np.zeros(APOGEE_NWAVE, bool)
    for a, b in APOGEE_CHIPS.values():
        on[a:b] = True
    flux[:, ~on], err[:, ~on] = 0, 1e10
    mask[:, 1000] = 1 << APOGEE_PIXMASK['BADPIX']
    err[:, 1000] = 1e10
    mask[:, 1001] = 1 << APOGEE_PIXMASK['SIG_TELLURIC']
    mask[:, 1002] = 1 << APOGEE_PIXMASK['CRPIX']
    if nvis == 1:
        flux[1], err[1] = 0, 0
    h = fits.Header()
    for k, v in [
        ('CRVAL1', APOGEE_CRVAL1),
        ('CDELT1', APOGEE_CDELT1),
        ('CRPIX1', 1),
        ('CTYPE1', 'LOG-LINEAR'),
        ('DC-FLAG', 1),
        ('NWAVE', APOGEE_NWAVE),
        ('FIELD', 'M67'),
        ('OBJID', '2M08512831+1133392'),
        ('SNR', 150.0),
        ('RA', 132.868),
        ('DEC', 11.56),
        ('NVISITS', nvis),
        ('STARFLAG', 0),
        ('ANDFLAG', 0),
        ('VHELIO', 33.5),
        ('VSCATTER', 0.1),
        ('VERR', 0.05),
    ]:
        h[k] = v
    for n in range(1, nvis + 1):
        for k, v in [
            ('SFILE', f'apVisit-dr17-6206-57103-{n:03d}.fits'),
            ('JD', 2457103.5 + n),
            ('BC', 10.0 + n),
            ('VRAD', 20.0),
            ('VHELIO', 33.0 + n),
            ('SNRVIS', 80.0 + n),
            ('FLAG', 0),
        ]:
            h[f'{k}{n}'] = v
    vt = Table({'FILENAME': [f'apVisit-{n}' for n in range(nvis)], 'VHELIO': np.arange(nvis, dtype=np.float32)})
    hdus = [
        fits.PrimaryHDU(header=h),
        fits.ImageHDU(flux),
        fits.ImageHDU(err),
        fits.ImageHDU(mask),
        *[fits.ImageHDU(np.zeros((R, APOGEE_NWAVE))) for _ in range(4)],
        fits.ImageHDU(),
        fits.BinTableHDU(vt),
        fits.BinTableHDU(vt[:1]),
    ]
    hdus[1].header['BUNIT'] = 'Flux (10^-17 erg/s/cm^2/Ang)'
    fits.HDUList(hdus).writeto(path)
    return path


def write_apvisit(path, vhelio=-12.5, bc=7.25, drop_hdu11=False):
    """apVisit: (3, 4096) float32 flux/err, int16 mask, float64 wavelength decreasing along rows, red chip first; HDU 11
    table."""
    p = np.arange(4096.0)
    wave = np.stack([16950 - 0.12 * p, 16430 - 0.14 * p, 15800 - 0.16 * p])
    flux = np.ones((3, 4096), np.float32)
    err = np.full((3, 4096), 0.02, np.float32)
    mask = np.zeros((3, 4096), np.int16)
    mask[0, 5] = 1 << APOGEE_PIXMASK['SATPIX']
    flux[1, 7] = np.nan
    err[2, 9] = 0
    h = fits.Header()
    for k, v in [
        ('OBJID', '2M00000000+0000000'),
        ('RA', 10.0),
        ('DEC', -5.0),
        ('SNR', 55.0),
        ('MJD5', 57103),
        ('FIBERID', 12),
        ('PLATE', '6206'),
        ('TELESCOP', 'apo25m'),
        ('DATE-OBS', '2015-03-20T03:00:00'),
    ]:
        h[k] = v
    hdus = [
        fits.PrimaryHDU(header=h),
        fits.ImageHDU(flux),
        fits.ImageHDU(err),
        fits.ImageHDU(mask),
        fits.ImageHDU(wave),
        *[fits.ImageHDU(np.zeros((3, 4096), np.float32)) for _ in range(4)],
        fits.ImageHDU(np.zeros((3, 14))),
        fits.ImageHDU(np.zeros((3, 26))),
    ]
    if not drop_hdu11:
        hdus.append(
            fits.BinTableHDU(
                Table(
                    {
                        'VHELIO': np.float32([vhelio]),
                        'VREL': np.float32([vhelio - bc]),
                        'BC': np.float32([bc]),
                        'SNR': np.float32([55.0]),
                        'STARFLAG': np.int64([0]),
                    }
                )
            )
        )
    fits.HDUList(hdus).writeto(path)
    return path


def write_galah(d, sid=SID, cameras=(1, 2, 3, 4), ext4=True, rv=15.0):
    """GALAH camera files: ext 0 flux (air, linear WCS), 1 relative error, 2-3 no-sky, 4 normalised rest frame (CCD4
    cut)."""
    for c in cameras:
        crval, cdelt = float(GALAH_COVERAGE[c][0]), GALAH_DISPERSION[c]
        flux = np.linspace(100, 200, 4096).astype(np.float32)
        rel = np.full(4096, 0.01, np.float32)
        h = fits.Header(
            [
                ('CRVAL1', crval),
                ('CDELT1', cdelt),
                ('CRPIX1', 1.0),
                ('CTYPE1', 'LINEAR'),
                ('CUNIT1', 'Angstroms'),
                ('INSTRUME', 'HERMES-2dF'),
                ('ORIGIN', 'NOAO-IRAF FITS Image Kernel July 2003'),
                ('UTMJD', 56695.44),
            ]
        )
        hdus = [fits.PrimaryHDU(flux, header=h)]
        for name, data in [('input_sigma', rel), ('no_sky_subspectrum', flux), ('no_sky_sigma', rel)]:
            hdus.append(fits.ImageHDU(data, header=h.copy(), name=name))
        if ext4:
            cut = 1483 if c == 4 else 0
            h4 = fits.Header(
                [
                    ('CRPIX1', 1.0),
                    ('CRVAL1', (crval + cut * cdelt) / (1 + rv / C_KMS)),
                    ('CDELT1', cdelt / (1 + rv / C_KMS)),
                    ('CUNIT1', 'Angstroms'),
                ]
            )
            hdus.append(fits.ImageHDU(np.ones(4096 - cut), header=h4))
        fits.HDUList(hdus).writeto(Path(d) / f'{sid}{c}.fits')
    return Path(d) / f'{sid}{cameras[0]}.fits'


def write_uves(path, ucd=UCD_AIR, cols=('FLUX_REDUCED', 'ERR_REDUCED', 'FLUX', 'ERR'), qual=True, unit='nm'):
    "ESO Phase-3 UVES: header-only primary, one-row BINTABLE 'SPECTRUM' of vector columns (nm), TUCDn."
    n = 2000
    wave = np.linspace(480.0, 680.0, n) * (10 if unit == 'Angstrom' else 1)
    flux = np.ones(n)
    err = np.full(n, 0.01)
    flux[100:150], err[100:150] = 0, 0
    q = np.zeros(n, np.int32)
    q[7] = 1
    arrays = {'WAVE': wave, **{c: (flux if not c.startswith('ERR') else err) * (2 if c == 'FLUX' else 1) for c in cols}}
    if qual:
        arrays['QUAL'] = q
    fc = [
        fits.Column(
            name=k, format=f'{n}{"J" if k == "QUAL" else "D"}', array=v[None], unit=unit if k == 'WAVE' else None
        )
        for k, v in arrays.items()
    ]
    t = fits.BinTableHDU.from_columns(fc, name='SPECTRUM')
    if ucd:
        t.header['TUCD1'] = ucd
    h = fits.Header()
    for k, v in [
        ('ORIGIN', 'ESO'),
        ('TELESCOP', 'ESO-VLT-U2'),
        ('INSTRUME', 'UVES'),
        ('OBJECT', 'M67_00012'),
        ('RA', 132.8),
        ('DEC', 11.8),
        ('PRODCATG', 'SCIENCE.SPECTRUM'),
        ('SPECSYS', 'TOPOCENT'),
        ('SPEC_RES', 47000.0),
        ('SNR', 60.0),
        ('ARCFILE', 'ADP.2019-03-01T00:00:00.000.fits'),
        ('HIERARCH ESO INS GRAT2 WLEN', 580.0),
        ('HIERARCH ESO QC VRAD BARYCOR', -8.5),
    ]:
        h[k] = v
    fits.HDUList([fits.PrimaryHDU(header=h), t]).writeto(path)
    return path


# ---------------------------------------------------------------- APOGEE
def test_apstar_rows_visits_chips_and_bits(tmp_path):
    p = write_apstar(tmp_path / 'apStar-dr17-2M08512831+1133392.fits', nvis=3)
    assert identify(p) == ('apogee', 'apStar')
    s = read_spectrum(p)
    np.testing.assert_allclose(s.wave, apogee_wavelength(), rtol=1e-12)
    assert s.frame == 'rest' and s.star_id == '2M08512831+1133392' and s.rv == 33.5 and s.meta['NVISITS'] == 3
    assert s.flux_unit == '1e-17 erg / (Angstrom cm2 s)'
    assert (s.flags[:246] & PixelFlag.NO_DATA).all() and (s.flags[3274:3585] & PixelFlag.DETECTOR_GAP).all()
    assert (s.flags[6080:6344] & PixelFlag.DETECTOR_GAP).all() and (s.flags[8335:] & PixelFlag.NO_DATA).all()
    assert not s.mask[246:3274][[0, 500, 1500]].any()
    assert s.flags[1000] & PixelFlag.BAD_PIXEL and s.mask[1000]  # BADPIX with error 1e10
    assert s.flags[1001] & PixelFlag.TELLURIC and not s.mask[1001]  # flagged, kept
    assert s.flags[1002] & PixelFlag.COSMIC_RAY and s.mask[1002]
    assert s.survey_flags[1001] == 1 << APOGEE_PIXMASK['SIG_TELLURIC']  # original bits kept
    vs = read_apstar_visits(p)
    assert [v.meta['row'] for v in vs] == [2, 3, 4] and [v.rv for v in vs] == [34.0, 35.0, 36.0]
    assert [v.bc for v in vs] == [11.0, 12.0, 13.0] and vs[0].visit_id == 'apVisit-dr17-6206-57103-001.fits'
    assert read_apstar(p, row=1).meta['combination'] == 'global'
    with pytest.raises(SpectrumReadError, match='row 9 does not exist'):
        read_apstar(p, row=9)


def test_apstar_one_visit(tmp_path):
    p = write_apstar(tmp_path / 'asStar-dr17-x.fits', nvis=1)
    vs = read_apstar_visits(p)
    assert len(vs) == 1 and vs[0].meta['row'] == 0 and vs[0].rv == 34.0 and vs[0].snr == 81.0
    assert read_apstar(p).meta['telescope'] == 'lco25m'
    with pytest.raises(SpectrumReadError, match='row 1 .* empty'):
        read_apstar(p, row=1)


def test_apvisit_sorted_observed_vhelio(tmp_path):
    p = write_apvisit(tmp_path / 'apVisit-dr17-6206-57103-012.fits')
    assert identify(p) == ('apogee', 'apVisit')
    s = read_spectrum(p)
    assert len(s) == 3 * 4096 and (np.diff(s.wave) > 0).all() and s.wave[0] == pytest.approx(15800 - 0.16 * 4095)
    assert s.frame == 'observed' and s.rv == -12.5 and s.bc == 7.25 and s.frame_rv == pytest.approx(-19.75)
    assert s.visit_id == '6206-57103-012' and s.meta['telescope'] == 'apo25m'
    assert s.mask.sum() == 3 and ((s.flags & PixelFlag.SATURATED) != 0).sum() == 1
    assert ((s.flags & PixelFlag.NONFINITE) != 0).sum() == 1 and (
        (s.flags & PixelFlag.BAD_ERROR) != 0
    ).sum() == 2  # NaN flux, zero error
    assert np.isfinite(s.flux).all() and np.isfinite(s.ivar).all()


# ---------------------------------------------------------------- GALAH (real files)
def test_galah_real_four_cameras_stitched():
    with warnings.catch_warnings():
        warnings.simplefilter('error', ReaderWarning)
        g = read_spectrum(REAL / f'{SID}2.fits')
    assert g.survey == 'galah' and g.product == 'ccd1234' and g.frame == 'barycentric' and g.star_id == str(SID)
    assert len(g) == 4 * 4096 and (np.diff(g.wave) > 0).all() and g.meta['missing_cameras'] == []
    for c, (name, a, b) in enumerate(g.meta['segments'], 1):
        h = fits.getheader(REAL / f'{SID}{c}.fits')
        air = linear_wavelength(h['CRVAL1'], h['CDELT1'], 4096)
        lo, hi = GALAH_COVERAGE[c]
        assert name == f'ccd{c}' and abs(air[0] - lo) < 5 and abs(air[-1] - hi) < 5  # right coverage
        shift = g.wave[a:b] - air
        assert 1.3 < shift.min() < shift.max() < 2.2  # air -> vacuum
        np.testing.assert_allclose(g.wave[a:b], air_to_vacuum(air), rtol=1e-12)
        f0, rel = fits.getdata(REAL / f'{SID}{c}.fits', 0), fits.getdata(REAL / f'{SID}{c}.fits', 1)
        np.testing.assert_allclose(g.sigma[a:b], np.abs(f0 * rel), rtol=1e-5)  # sigma absolute
        np.testing.assert_array_equal(g.flux[a:b], f0)
    assert g.rv == pytest.approx(-19.0, abs=0.1) and g.snr > 10


def test_galah_real_ext4_and_single_camera():
    n = read_galah(REAL / f'{SID}1.fits', normalised=True)
    assert (
        n.frame == 'rest'
        and n.flux_unit == ''
        and [s[2] - s[1] for s in n.meta['segments']] == [4096, 4096, 4096, 2613]
    )
    a, b = n.meta['segments'][3][1:]
    assert n.wave[a] > 7694 and abs(np.median(n.flux) - 1) < 0.1
    h4 = fits.getheader(REAL / f'{SID}4.fits', 4)
    np.testing.assert_allclose(
        n.wave[a:b], air_to_vacuum(linear_wavelength(h4['CRVAL1'], h4['CDELT1'], 2613)), rtol=1e-12
    )
    rel = fits.getdata(REAL / f'{SID}4.fits', 1)[1483:]
    np.testing.assert_allclose(n.sigma[a:b], np.abs(fits.getdata(REAL / f'{SID}4.fits', 4) * rel), rtol=1e-5)
    one = read_galah(REAL / f'{SID}3.fits', stitch=False)
    assert one.product == 'ccd3' and len(one) == 4096


def test_galah_missing_camera_and_ext4(tmp_path):
    first = write_galah(tmp_path, cameras=(1, 3, 4))
    with pytest.warns(ReaderWarning, match=r'lacks camera\(s\) \[2\]'):
        g = read_galah(first)
    assert g.product == 'ccd134' and g.meta['missing_cameras'] == [2] and g.rv == pytest.approx(15.0, abs=1e-6)
    np.testing.assert_allclose(
        g.sigma[:4096], np.linspace(100, 200, 4096).astype(np.float32) * np.float32(0.01), rtol=1e-5
    )
    d2 = tmp_path / 'no4'
    d2.mkdir()
    write_galah(d2, ext4=False)
    assert read_galah(d2 / f'{SID}1.fits').meta['has_ext4'] is False
    with (
        pytest.warns(ReaderWarning, match='no extension 4'),
        pytest.raises(SpectrumReadError, match='no camera has an extension 4'),
    ):
        read_galah(d2 / f'{SID}1.fits', normalised=True)
    with pytest.raises(SpectrumReadError, match='no extension 4'):
        read_galah(d2 / f'{SID}1.fits', normalised=True, stitch=False)
    n = read_galah(first, normalised=True, stitch=False)
    assert n.meta['ext4_offset'] == 0 and n.frame == 'rest'
    renamed = tmp_path / 'star.fits'
    shutil.copy(first, renamed)
    with pytest.warns(ReaderWarning, match='cannot be found'):
        assert read_galah(renamed).product == 'ccd1'


# ---------------------------------------------------------------- UVES
def test_uves_columns_units_medium(tmp_path):
    p = write_uves(tmp_path / 'ADP.a.fits')
    assert identify(p) == ('ges', 'uves')
    s = read_spectrum(p)
    np.testing.assert_allclose(s.wave, air_to_vacuum(np.linspace(4800, 6800, 2000)), rtol=1e-12)
    assert s.meta['flux_column'] == 'FLUX_REDUCED' and s.meta['medium_in_file'] == 'air' and s.meta['setup'] == 'U580'
    assert s.frame == 'observed' and s.bc == -8.5 and s.R == 47000 and s.star_id == 'M67_00012'
    assert s.mask[7] and (s.flags[100:150] & PixelFlag.NO_DATA).all() and s.mask.sum() == 51 and s.survey_flags[7] == 1
    assert read_uves(p, 'FLUX', 'ERR').flux[0] == 2
    v = read_spectrum(
        write_uves(tmp_path / 'ADP.b.fits', ucd=UCD_VACUUM, cols=('FLUX', 'ERR'), qual=False, unit='Angstrom')
    )
    np.testing.assert_allclose(v.wave, np.linspace(4800, 6800, 2000), rtol=1e-12)
    assert v.meta['flux_column'] == 'FLUX' and v.meta['medium_in_file'] == 'vacuum' and v.survey_flags is None
    with pytest.warns(ReaderWarning, match='no UCD'):
        read_spectrum(write_uves(tmp_path / 'ADP.c.fits', ucd=None))
    with pytest.raises(SpectrumReadError, match='lacks a wavelength column or a flux/error pair'):
        read_spectrum(write_uves(tmp_path / 'ADP.d.fits', cols=('NORMALISED',)))


# ---------------------------------------------------------------- bad input
def test_broken_files(tmp_path):
    src = REAL / f'{SID}1.fits'
    b = src.read_bytes()
    cut = tmp_path / f'{SID}1.fits'
    cut.write_bytes(b[: len(b) - 1000])
    with pytest.raises(SpectrumReadError, match='truncated') as e:
        read_spectrum(cut)
    assert str(cut) in str(e.value) and e.value.path == str(cut)
    cut.write_bytes(b[: 2880 * 10])  # cut on a block boundary
    with pytest.raises(SpectrumReadError, match='truncated'):
        read_spectrum(cut)
    txt = tmp_path / 'notes.fits'
    txt.write_text('this is not FITS\n' * 200)
    with pytest.raises(SpectrumReadError, match='not a FITS file'):
        read_spectrum(txt)
    with pytest.raises(SpectrumReadError, match='no such file'):
        read_spectrum(tmp_path / 'missing.fits')
    with pytest.raises(SpectrumReadError, match='expected apogee apStar, but the file is galah camera'):
        read_apstar(src)
    cat = tmp_path / 'cat.fits'
    Table({'CNAME': ['a'], 'RA': [1.0]}).write(cat)
    with pytest.raises(SpectrumReadError, match='ges catalogue, not a spectrum'):
        read_spectrum(cat)
    with pytest.raises(SpectrumReadError, match='missing HDU 11'):
        read_apvisit(write_apvisit(tmp_path / 'v.fits', drop_hdu11=True))
    p = write_apstar(tmp_path / 'apStar-bad.fits', nvis=2)
    with fits.open(p, mode='update') as h:
        h[0].header['NVISITS'] = 3
    with pytest.raises(SpectrumReadError, match=r'shape \(4, 8575\), expected \(5, NWAVE\)'):
        read_apstar(p)
    g = tmp_path / 'g'
    g.mkdir()
    write_galah(g, cameras=(1,))
    with fits.open(g / f'{SID}1.fits') as h:
        fits.HDUList([h[0].copy()]).writeto(g / 'x.fits')
    with (
        pytest.warns(ReaderWarning),
        pytest.raises(SpectrumReadError, match=r"lacks extension 'input_sigma' \(relative error"),
    ):
        read_spectrum(g / 'x.fits')
    err = SpectrumReadError('a.fits', 'broken')
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.problem, str(back)) == ('a.fits', 'broken', 'a.fits: broken')


@pytest.mark.parametrize(
    'product, hdu, key',
    [
        ('galah', 0, 'CDELT1'),
        ('galah', 4, 'CRVAL1'),
        ('apstar', 0, 'NVISITS'),
        ('apstar', 0, 'CDELT1'),
        ('uves', 0, 'SPEC_RES'),
    ],
)
def test_header_number_that_is_text(tmp_path, product, hdu, key):
    """A header keyword the reader computes with that holds text (one changed byte): the error names the file, the HDU
    and the keyword, not a TypeError from the arithmetic."""
    if product == 'galah':
        write_galah(tmp_path, cameras=(1,))
        p = tmp_path / f'{SID}1.fits'
    else:
        p = (write_apstar if product == 'apstar' else write_uves)(tmp_path / f'{product}.fits')
    with fits.open(p, mode='update') as h:
        h[hdu].header[key] = f'*{h[hdu].header.get(key, 47000)}'
    with pytest.raises(
        SpectrumReadError, match=rf"HDU {hdu}: header keyword {key} = '\*.*' is not a finite number"
    ) as e:
        read_spectrum(p, normalised=product == 'galah' and hdu == 4)
    assert e.value.path == str(p)


@pytest.mark.parametrize('garbage', ['tiny', 'nan', 'reversed'])
def test_uves_wavelength_column_that_is_garbage(tmp_path, garbage):
    """A UVES file whose wavelength column is garbage (tiny numbers, a NaN, reversed) ends in one error naming the file
    and the column, with no numpy overflow warnings from the air-to-vacuum conversion before it."""
    p = write_uves(tmp_path / 'u.fits')
    with fits.open(p, mode='update') as h:
        w = h[1].data['WAVE'][0]
        w[:] = {
            'tiny': np.full(w.size, 1e-300),
            'nan': np.where(np.arange(w.size) == 9, np.nan, w),
            'reversed': w[::-1],
        }[garbage]
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)
        with pytest.raises(
            SpectrumReadError, match=r"wavelength column 'WAVE' is not finite, strictly increasing"
        ) as e:
            read_spectrum(p)
    assert e.value.path == str(p)


def test_nan_flux_and_zero_errors_are_masked(tmp_path):
    d = tmp_path / 'g'
    d.mkdir()
    write_galah(d, cameras=(1,))
    with fits.open(d / f'{SID}1.fits', mode='update') as h:
        h[0].data[10] = np.nan
        h[0].data[11] = np.inf
        h[1].data[12] = 0
        h[1].data[13] = -1
        h[1].data[14] = np.nan
    s = read_galah(d / f'{SID}1.fits', stitch=False)
    assert s.mask[10:15].all() and s.mask.sum() == 5 and np.isfinite(s.flux).all() and (s.ivar[10:15] == 0).all()
    assert (s.flags[10:12] & PixelFlag.NONFINITE).all() and (s.flags[12:15] & PixelFlag.BAD_ERROR).all()


# ---------------------------------------------------------------- adapters, batches, resources
def test_specutils_round_trip_of_read_spectra(tmp_path):
    from specutils import Spectrum as SU
    from astropy.nddata import InverseVariance

    for s in [
        read_galah(REAL / f'{SID}1.fits'),
        read_apstar(write_apstar(tmp_path / 'a.fits')),
        read_uves(write_uves(tmp_path / 'u.fits')),
    ]:
        su = s.to_specutils()
        assert (
            isinstance(su, SU) and isinstance(su.uncertainty, InverseVariance) and su.spectral_axis.unit == 'Angstrom'
        )
        np.testing.assert_array_equal(su.mask, s.mask)
        b = Spectrum.from_specutils(su)
        for a in (
            'wave',
            'flux',
            'ivar',
            'flags',
            'survey_flags',
            'frame',
            'R',
            'survey',
            'product',
            'star_id',
            'visit_id',
            'ra',
            'dec',
            'snr',
            'rv',
            'bc',
            'flux_unit',
        ):
            np.testing.assert_array_equal(getattr(b, a), getattr(s, a), err_msg=a)
        assert b.meta.keys() == s.meta.keys()


def test_read_many_order_errors_and_open_files(tmp_path):
    files = [
        write_apvisit(tmp_path / 'v.fits'),
        write_uves(tmp_path / 'u.fits'),
        REAL / f'{SID}4.fits',
        write_apstar(tmp_path / 'a.fits'),
    ]
    out = read_many(files, n_workers=2, progress=False)
    assert [s.product for s in out] == ['apVisit', 'uves', 'ccd1234', 'apStar']
    assert [s.product for s in read_many(files[:2], n_workers=2, processes=True, progress=False)] == ['apVisit', 'uves']
    bad = tmp_path / 'bad.fits'
    bad.write_text('x')
    with pytest.raises(SpectrumReadError):
        read_many([files[0], bad], progress=False)
    with pytest.warns(ReaderWarning, match='not a FITS file'):
        r = read_many([files[0], bad], progress=False, errors='warn')
    assert r[1] is None and r[0].product == 'apVisit'
    read_many(files, progress=False)
    before = n_fds()
    for _ in range(50):
        read_many(files, progress=False, stitch=False)
    assert n_fds() == before  # no descriptor outlives a read


def test_catalogues(tmp_path):
    t = Table(
        {
            'APOGEE_ID': ['2M1 ', '2M2'],
            'TELESCOPE': ['apo25m', 'lco25m'],
            'FIELD': ['a', 'b'],
            'RA': [1.0, 2.0],
            'DEC': [3.0, 4.0],
            'NVISITS': np.int32([1, 2]),
            'SNR': np.float32([1, 2]),
            'STARFLAG': np.int64([0, 1]),
            'VHELIO_AVG': np.float32([1, 2]),
            'VSCATTER': np.float32([0, 0]),
            'VERR': np.float32([0, 0]),
            'GAIAEDR3_SOURCE_ID': np.int64([1, 2]),
            'GAIAEDR3_PMRA': np.float32([1, np.nan]),
            'GAIAEDR3_PMDEC': np.float32([1, 2]),
            'ASPCAPFLAG': np.int64([0, 0]),
            'TEFF': np.float32([5000, 4000]),
            'LOGG': np.float32([4, 2]),
            'M_H': np.float32([0, 0]),
            'FE_H': np.float32([0, 0]),
            'EXTRA': [1, 2],
            'fe_h_err': np.float32([0.1, 0.1]),
        }
    )
    p = tmp_path / 'allStar.fits'
    t.write(p)
    a = read_allstar(p)
    assert list(a['APOGEE_ID']) == ['2M1', '2M2'] and 'EXTRA' not in a.colnames and 'FE_H_ERR' in a.colnames
    assert a['TEFF'].dtype.byteorder in '=|<' and np.isnan(a['GAIAEDR3_PMRA'][1])
    t.remove_column('FE_H')
    t.write(p, overwrite=True)
    with pytest.raises(SpectrumReadError, match=r"missing column\(s\) \['FE_H'\]"):
        read_allstar(p)
    with pytest.raises(SpectrumReadError, match='missing column'):
        read_galah_catalogue(p)
    t['FE_H'] = np.float32([0, 0])
    t.write(p, overwrite=True)
    before = n_fds()
    for _ in range(20):
        read_allstar(p, columns=['EXTRA'])
    assert n_fds() == before and 'EXTRA' in read_allstar(p, columns=['EXTRA']).colnames


# ---------------------------------------------------------------- the mock sky: recover the truth
@pytest.fixture(scope='module')
def sky(tmp_path_factory):
    from stellar_spectra.mock.mocksky import generate_mock_sky

    d = tmp_path_factory.mktemp('sky')
    generate_mock_sky(d, n_stars=40, seed=4, progress=False)
    obs = pd.read_parquet(d / 'truth' / 'observations.parquet')
    stars = pd.read_parquet(d / 'truth' / 'stars.parquet').set_index('star_index')
    return d, obs, stars, json.loads((d / 'truth' / 'meta.json').read_text())


def _orbit(star, mjd):
    from stellar_spectra.mock.instrument import orbit_velocity

    return orbit_velocity(star, mjd)


def test_mock_products_recognised(sky):
    d, obs, _, _ = sky
    want = {'apStar': ('apogee', 'apStar'), 'apVisit': ('apogee', 'apVisit'), 'uves': ('ges', 'uves')}
    for rel, prod in obs.groupby('relpath')['product'].first().items():
        assert identify(d / rel) == want.get(prod, ('galah', 'camera')), rel


def test_mock_apstar_truth(sky):
    d, obs, stars, _ = sky
    for rel, o in obs[obs['product'] == 'apStar'].groupby('relpath'):
        star = stars.loc[o.star_index.iloc[0]].to_dict() | {'star_index': o.star_index.iloc[0]}
        s = read_apstar(d / rel)
        vs = read_apstar_visits(d / rel)
        np.testing.assert_allclose(s.wave, apogee_wavelength(), rtol=1e-6)
        assert s.star_id == star['apogee_id'] and s.meta['telescope'] == star['telescope'] and len(vs) == len(o)
        with fits.open(d / rel) as h:
            pm = h[3].data
        for v, (_, ob) in zip(vs, o.sort_values('visit').iterrows()):
            assert v.meta['row'] == ob['row']
            assert v.rv == pytest.approx(star['rv'] + _orbit(star, ob['mjd']), abs=1e-3) and v.bc == pytest.approx(
                ob['bc'], abs=1e-4
            )
            np.testing.assert_array_equal(v.survey_flags, pm[ob['row']])
            assert (v.mask[(pm[ob['row']] & 1) != 0]).all()  # BADPIX masked
        assert ((s.flags & PixelFlag.TELLURIC) != 0).sum() == ((pm[0] >> 13 & 1) != 0).sum()


def test_mock_apvisit_truth(sky):
    d, obs, stars, _ = sky
    for _, ob in obs[obs['product'] == 'apVisit'].iterrows():
        star = stars.loc[ob.star_index].to_dict() | {'star_index': ob.star_index}
        s = read_apvisit(d / ob.relpath)
        with fits.open(d / ob.relpath) as h:
            w = np.sort(h[4].data.ravel())
        np.testing.assert_allclose(s.wave, w, rtol=1e-12)
        if ob.fault != 'wrong_wavelength':
            assert 15100 < s.wave[0] < 15200 and 16900 < s.wave[-1] < 17000
        assert s.star_id == star['apogee_id'] and s.frame == 'observed'
        assert s.rv == pytest.approx(star['rv'] + _orbit(star, ob['mjd']), abs=1e-3)
        assert s.frame_rv == pytest.approx(ob['rv_file'] + _orbit(star, ob['mjd']), abs=1e-3)
        assert ((s.flags & PixelFlag.COSMIC_RAY) != 0).sum() <= ob['n_cosmics'] and (
            (s.flags & PixelFlag.COSMIC_RAY) != 0
        ).sum() > 0


def test_mock_galah_truth(sky):
    d, obs, stars, meta = sky
    gal = obs[obs.survey == 'galah']
    for sid, o in gal.groupby(gal.relpath.str.extract(r'(\d{15})\d\.fits')[0]):
        star = stars.loc[o.star_index.iloc[0]].to_dict() | {'star_index': o.star_index.iloc[0]}
        missing = meta['galah_missing_cameras'].get(sid, [])
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            g = read_spectrum(d / o.relpath.iloc[0])
        assert g.meta['missing_cameras'] == missing and (
            bool(missing) == any('lacks camera' in str(x.message) for x in w)
        )
        assert g.star_id == sid and g.product == 'ccd' + ''.join(str(c) for c in sorted(o.ccd))
        for (_, ob), (name, a, b) in zip(o.sort_values('ccd').iterrows(), g.meta['segments']):
            assert name == f"ccd{ob['ccd']}"
            if ob.fault != 'wrong_wavelength':
                assert g.wave[a] == pytest.approx(ob['wmin'], rel=1e-6) and g.wave[b - 1] == pytest.approx(
                    ob['wmax'], rel=1e-6
                )
        if int(sid) in meta['galah_without_ext4']:
            assert np.isnan(g.rv)
            with pytest.warns(ReaderWarning), pytest.raises(SpectrumReadError, match='no camera has an extension 4'):
                read_spectrum(d / o.relpath.iloc[0], normalised=True)
        else:
            assert g.rv == pytest.approx(star['rv'] + _orbit(star, o.mjd.iloc[0]), abs=1e-3)
            n = read_spectrum(d / o.relpath.iloc[0], normalised=True)
            assert n.frame == 'rest' and abs(np.median(n.flux[~n.mask]) - 1) < 0.2


def test_mock_uves_truth(sky):
    d, obs, stars, _ = sky
    eso = pd.read_csv(d / 'gaiaeso' / 'eso_archive_query.csv').set_index('ARCFILE')
    for _, ob in obs[obs['product'] == 'uves'].iterrows():
        s = read_uves(d / ob.relpath)
        arc = Path(ob.relpath).name
        if ob.fault != 'wrong_wavelength':
            assert s.wave[0] == pytest.approx(ob['wmin'], rel=1e-6) and s.wave[-1] == pytest.approx(
                ob['wmax'], rel=1e-6
            )
        assert s.visit_id == arc and s.star_id == eso.loc[arc, 'OBJECT'] and s.meta['setup'] == ob['setup']
        assert s.meta['medium_in_file'] == 'air' and s.bc == pytest.approx(ob['bc'], abs=1e-3)
        assert s.frame == 'observed' and np.isnan(s.rv)  # RV comes from the catalogue
        if ob['has_qual']:
            with fits.open(d / ob.relpath) as h:
                q = h[1].data['QUAL'][0]
            assert s.mask[q != 0].all()


def test_mock_catalogues(sky):
    d, _, stars, _ = sky
    a = read_allstar(d / 'sdss/dr17/apogee/spectro/aspcap/dr17/synspec_rev1/allStar-dr17-synspec_rev1.fits')
    g = read_galah_catalogue(d / 'galah/GALAH_DR3/GALAH_DR3_main_allstar_v2.fits')
    e = read_ges_catalogue(d / 'gaiaeso/GES_DR4_catalogue.fits')
    assert sorted(a['APOGEE_ID']) == sorted(stars.apogee_id[stars.in_apogee])
    assert sorted(g['sobject_id']) == sorted(stars.sobject_id[stars.in_galah])
    assert sorted(e['CNAME']) == sorted(stars.cname[stars.in_ges]) and 'OBJECT' in e.colnames


# ---------------------------------------------------------------- issue #16: bad input and failures
def _galah_without(src, dst, drop=(), order=None):
    "Copy of a GALAH camera file with the extensions named in `drop` removed and/or the extensions reordered."
    with fits.open(src) as h:
        hdus = [h[0].copy()] + [x.copy() for x in h[1:] if x.header.get('EXTNAME') not in drop]
    if order:
        hdus = [hdus[0]] + [hdus[i] for i in order]
    fits.HDUList(hdus).writeto(dst)
    return dst


def test_galah_extensions_by_name(tmp_path):
    src = REAL / f'{SID}4.fits'
    no_sigma = _galah_without(src, tmp_path / f'{SID}4.fits', drop=('input_sigma',))
    with pytest.raises(SpectrumReadError, match=r"lacks extension 'input_sigma' \(relative error\)") as e:
        read_galah(no_sigma, stitch=False)  # was read with sigma/flux = 3404 from no_sky_subspectrum
    assert e.value.path == str(no_sigma) and 'no_sky_subspectrum' in e.value.problem
    d = tmp_path / 'shuffled'
    d.mkdir()
    moved = _galah_without(src, d / f'{SID}4.fits', order=[4, 2, 3, 1])  # ext 4 first, input_sigma last
    ref, s = read_galah(src, stitch=False), read_galah(moved, stitch=False)
    np.testing.assert_array_equal(s.sigma, ref.sigma)
    assert np.nanmedian(s.sigma / s.flux) == pytest.approx(0.0104, abs=1e-3)
    np.testing.assert_array_equal(
        read_galah(moved, normalised=True, stitch=False).flux, read_galah(src, normalised=True, stitch=False).flux
    )


def test_uves_spectrum_table_by_name(tmp_path):
    p = write_uves(tmp_path / 'ADP.a.fits')
    with fits.open(p) as h:
        junk = fits.BinTableHDU(Table({'WAVE': [[1.0, 2.0]], 'FLUX': [[9.0, 9.0]], 'ERR': [[1.0, 1.0]]}), name='OTHER')
        fits.HDUList([h[0].copy(), junk, h[1].copy()]).writeto(tmp_path / 'ADP.b.fits')
        t = h[1].copy()
        del t.header['EXTNAME']
        fits.HDUList([h[0].copy(), t]).writeto(tmp_path / 'ADP.c.fits')
    np.testing.assert_array_equal(read_uves(tmp_path / 'ADP.b.fits').flux, read_uves(p).flux)  # SPECTRUM in HDU 2
    with pytest.warns(ReaderWarning, match="no extension named 'SPECTRUM'"):
        assert len(read_uves(tmp_path / 'ADP.c.fits')) == 2000


def test_real_galah_spike_flagged():
    g = read_galah(REAL / f'{SID}1.fits')
    cr = {n: np.flatnonzero(g.flags[a:b] & PixelFlag.COSMIC_RAY) for n, a, b in g.meta['segments']}
    assert all(len(cr[f'ccd{c}']) == 0 for c in (1, 2, 3))
    f4 = fits.getdata(REAL / f'{SID}4.fits', 0)
    peak = int(np.argmax(f4))
    assert f4[peak] > 2e5 and np.median(f4) < 3000 and peak in cr['ccd4']  # the 213,000-count hit
    a4 = g.meta['segments'][3][1]
    assert g.mask[a4 + peak] and g.ivar[a4 + peak] > 0  # masked, data untouched
    assert set(range(peak - 3, peak + 4)) <= set(cr['ccd4']) and len(cr['ccd4']) < 25
    n = read_galah(REAL / f'{SID}1.fits', normalised=True)
    a, b = n.meta['segments'][3][1:]
    assert n.mask[a + peak - 1483] and (n.flags[:a] & PixelFlag.COSMIC_RAY).sum() == 0


def test_flag_spikes_mock_lines_and_hits():
    rng = np.random.default_rng(0)
    x = np.arange(4000.0)
    lines = np.prod(
        [1 - rng.uniform(0.2, 0.98) * np.exp(-0.5 * ((x - c) / 2.0) ** 2) for c in rng.uniform(0, 4000, 350)], axis=0
    )
    sig = np.full(x.size, 0.004)
    f = lines + rng.normal(0, 0.004, x.size)
    quiet = flag_spikes(Spectrum.from_sigma(5000 + 0.05 * x, f, sig))
    assert not (quiet.flags & PixelFlag.COSMIC_RAY).any()  # no line core, no continuum peak
    hit = f.copy()
    core = int(np.argmin(lines))
    hit[core] += 3.0
    hit[1000] += 2.0
    hit[3000] += 0.02
    s = flag_spikes(Spectrum.from_sigma(5000 + 0.05 * x, hit, sig))
    got = set(np.flatnonzero(s.flags & PixelFlag.COSMIC_RAY))
    assert {core, 1000} <= got <= {core - 1, core, core + 1, 999, 1000, 1001} and 3000 not in got


def test_from_specutils_refuses_negative_uncertainty_and_unknown_unit():
    import astropy.units as u
    from astropy.nddata import StdDevUncertainty, VarianceUncertainty, InverseVariance
    from specutils import Spectrum as SU

    for U in (StdDevUncertainty, VarianceUncertainty, InverseVariance):
        su = SU(flux=[1.0, 2.0] * u.Jy, spectral_axis=[5000.0, 5001.0] * u.AA, uncertainty=U([0.1, -0.1]))
        with pytest.raises(ValueError, match='negative'):
            Spectrum.from_specutils(su)
    odd = SU(
        flux=u.Quantity([1.0, 2.0], u.Unit('counts_per_blarg', parse_strict='silent')),
        spectral_axis=[5000.0, 5001.0] * u.AA,
        uncertainty=StdDevUncertainty([0.1, 0.1]),
    )
    with pytest.raises(ValueError, match="unknown flux unit 'counts_per_blarg'"):
        Spectrum.from_specutils(odd)
    with pytest.raises(ValueError, match='unknown flux unit'):
        Spectrum([1.0, 2.0], [1, 1], [1, 1], flux_unit='blarg').to_specutils()


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    'recipe,ok',
    [
        ("echo '5 passed, 1 warning in 3.2s'", True),
        ("echo 'no tests ran in 0.1s'; exit 5", False),
        ("echo 'no tests ran'; echo '1 failed in 1s'; exit 1", False),
        ("echo fine", False),
        ("echo '3 skipped in 0.1s'", False),
    ],
)
def test_ci_run_fails_on_failures_and_empty_runs(tmp_path, recipe, ok):
    import subprocess

    (tmp_path / '.ci').mkdir()
    shutil.copy(ROOT / '.ci' / 'run', tmp_path / '.ci' / 'run')
    (tmp_path / 'Makefile').write_text(f'test:\n\t@bash -c "{recipe}"\n')
    rc = subprocess.run(
        ['bash', str(tmp_path / '.ci' / 'run')], capture_output=True, env={**os.environ, 'TMPDIR': str(tmp_path)}
    ).returncode
    assert (rc == 0) == ok


def test_nbdev_reads_every_test_flag():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'settings.ini')
    assert cfg['DEFAULT']['tst_flags'].split() == ['notest', 'slow', 'gpu']  # nbdev_test splits tst_flags on whitespace
