"""The alignment guard (issue #6) on a tiny mock sky: the correct processing (read_spectrum -> to_rest_grid ->
continuum.normalise) passes for all three surveys, each classic fault (air wavelengths taken for vacuum, velocity
skipped, velocity doubled, wavelength solution one native pixel off) raises MisalignedGridError naming the survey at
fault and only that one, the mock sky's wrong wavelength solutions are reported as outliers without failing the
stage, and one star seen by GALAH and Gaia-ESO agrees with itself on the common grid."""

import pickle
import warnings
import numpy as np
import pandas as pd
import pytest
from stellar_spectra.pipeline.resample import common_grid
from stellar_spectra.io.readers import read_spectrum
from stellar_spectra.pipeline.alignment import (
    FAULTS,
    MisalignedGridError,
    alignment_report,
    check_alignment,
    line_offsets,
    survey_row,
    process_for_check,
    spectrum_offsets,
    stack,
)

GRID = common_grid()
from stellar_spectra.formats import SURVEYS


@pytest.fixture(scope='module')
def sky(tmp_path_factory):
    "A 12-star mock sky, its spectra read once: APOGEE apVisits (observed frame), GALAH stitched, UVES."
    from stellar_spectra.mock.mocksky import generate_mock_sky

    root = tmp_path_factory.mktemp('alignment_sky')
    generate_mock_sky(root, n_stars=12, seed=3, n_workers=1, progress=False)
    obs = pd.read_parquet(root / 'truth' / 'observations.parquet')
    stars = pd.read_parquet(root / 'truth' / 'stars.parquet').set_index('star_index')
    batch = (
        obs[obs['product'].isin(['apVisit', 'uves']) | (obs['ccd'] == 1)]
        .drop_duplicates('relpath')
        .reset_index(drop=True)
    )
    ww = obs[obs['fault'] == 'wrong_wavelength']  # GALAH: one camera of the star (the batch holds it stitched)
    batch['wrong_wavelength'] = batch['relpath'].isin(ww['relpath']) | (
        (batch['survey'] == 'galah') & batch['star_index'].isin(ww.loc[ww['survey'] == 'galah', 'star_index'])
    )
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        spectra = [read_spectrum(root / r) for r in batch['relpath']]
    assert set(batch['survey']) == set(SURVEYS)
    return dict(
        root=root, batch=batch, stars=stars, spectra=spectra, rv=stars.loc[batch['star_index'], 'rv'].to_numpy()
    )


@pytest.fixture(scope='module')
def processed(sky):
    return [process_for_check(s, GRID, v) for s, v in zip(sky['spectra'], sky['rv'])]


def run(sky, processed, fault=None, survey=None):
    """The batch with the fault injected into one survey's spectra (the others as processed correctly): arrays,
    per-spectrum table, report."""
    out = [
        process_for_check(s, GRID, v, fault) if s.survey == survey else p
        for s, v, p in zip(sky['spectra'], sky['rv'], processed)
    ]
    fl, iv, bd = (np.stack([o[i] for o in out]) for i in range(3))
    per = spectrum_offsets(GRID, fl, iv, bd)
    return fl, iv, bd, per, alignment_report(GRID, fl, iv, bd, sky['batch']['survey'].to_numpy(), spectra=per)


@pytest.fixture(scope='module')
def correct(sky, processed):
    return run(sky, processed)


def test_correct_processing_passes(correct):
    rep = correct[4].set_index('survey')
    assert set(rep.index) == set(SURVEYS)
    assert (rep['offset_px'].abs() < 0.05).all(), rep
    assert (rep['n_lines'] >= 20).all() and (rep['scatter_px'] < 0.05).all()
    check_alignment(correct[4])  # does not raise


def test_wrong_wavelength_stars_are_outliers_not_fatal(sky, correct):
    per = pd.concat([sky['batch'][['survey', 'anomaly', 'wrong_wavelength']], correct[3]], axis=1)
    ww = per[per['wrong_wavelength']]
    assert len(ww) and ww['outlier'].all()  # reported
    assert not per.loc[per['anomaly'] == '', 'outlier'].any()  # normal stars never are
    assert per.loc[per['anomaly'] == '', 'offset_px'].abs().max() < 0.1


@pytest.mark.parametrize(
    'fault,survey', [(f, s) for f in FAULTS for s in SURVEYS if not (f == 'air' and s == 'apogee')]
)
def test_each_fault_raises_naming_the_survey(sky, processed, fault, survey):
    rep = run(sky, processed, fault, survey)[4]
    with pytest.raises(MisalignedGridError, match=f'{survey}: ') as e:
        check_alignment(rep)
    assert e.value.surveys == [survey]


def test_rv_skipped_on_a_batch_with_mean_velocity_zero_fails(sky):
    """One star seen at small velocities of zero mean, processed with the velocity skipped: the stack stays at 0, most
    spectra are within 0.5 px, but the per-spectrum offsets scatter: the guard fails."""
    import dataclasses
    from stellar_spectra.pipeline.resample import to_rest_grid
    from stellar_spectra.pipeline.continuum import normalise

    i = next(k for k, o in enumerate(sky['batch'].itertuples()) if o.survey == 'ges' and o.anomaly == '')
    base = dataclasses.replace(sky['spectra'][i], rv=sky['rv'][i])
    rest = base.wave / (1 + base.frame_rv / 299792.458)
    vs = np.array([-8.0, -3.0, 0.0, 3.0, 8.0])
    fl, iv, bd = [], [], []
    for v in vs:
        r = to_rest_grid(
            dataclasses.replace(base, wave=rest * (1 + v / 299792.458), frame='rest'), GRID
        )  # velocity skipped
        nf, niv = normalise(GRID.wave, r['flux'], r['ivar'], r['bad'])
        fl.append(nf)
        iv.append(niv)
        bd.append(r['bad'] | (niv == 0))
    fl, iv, bd = map(np.stack, (fl, iv, bd))
    np.testing.assert_allclose(line_offsets(GRID, fl, iv, bd), vs / (GRID.dln * 299792.458), atol=0.05)
    rep = alignment_report(GRID, fl, iv, bd, 'ges')
    assert abs(rep.loc[0, 'offset_px']) < 0.1 and rep.loc[0, 'n_outliers'] <= 2  # the stack alone would pass
    with pytest.raises(MisalignedGridError, match='ges: per-spectrum offsets scatter'):
        check_alignment(rep)


def test_same_star_galah_and_gaia_eso_agree(sky, correct):
    fl, iv, bd = correct[:3]
    b = sky['batch']
    both = [
        s
        for s in set(b.loc[b['survey'] == 'galah', 'star_index']) & set(b.loc[b['survey'] == 'ges', 'star_index'])
        if sky['stars'].loc[s, 'anomaly'] == ''
    ]
    assert both
    telluric = [(5795, 5815), (5865, 6005), (6465, 6605), (6855, 6895), (7155, 7345), (7585, 7760)]
    clear = ~np.any([(GRID.wave > lo) & (GRID.wave < hi) for lo, hi in telluric], axis=0)
    for s in both:
        i, j = (int(np.flatnonzero((b['survey'] == sv) & (b['star_index'] == s))[0]) for sv in ('galah', 'ges'))
        sh = ~bd[i] & ~bd[j] & clear
        assert sh.sum() > 1000
        pull = (fl[i] - fl[j])[sh] / np.sqrt(1 / iv[i][sh] + 1 / iv[j][sh])
        robust = 1.4826 * np.median(np.abs(pull - np.median(pull)))
        assert abs(np.median(pull)) < 0.3 and 0.8 < robust < 1.3 and pull.std() < 1.5
        # the two line offsets agree within their errors
        per = correct[3]
        d = per.loc[i, 'offset_px'] - per.loc[j, 'offset_px']
        assert abs(d) < 3 * np.hypot(per.loc[i, 'err_px'], per.loc[j, 'err_px']) + 0.03


def test_error_pickles_and_stack_weights():
    e = pickle.loads(pickle.dumps(MisalignedGridError('ges: stacked lines off', ['ges'])))
    assert e.surveys == ['ges'] and isinstance(e, ValueError)
    f, i, b = stack(np.array([[1.0, 1], [3, 1]]), np.array([[1.0, 0], [1, 0]]), np.zeros((2, 2), bool))
    assert f[0] == 2 and b[1] and i[0] == 2


def test_outliers_named_and_left_out_of_the_scatter():
    """Two of four spectra individually off (a wrong wavelength solution, an SB2: the Gaia-ESO survey of the 8-star sky
    of seed
    2) do not fail the survey: they are named, and the scatter is that of the others. Most spectra off still fails,
    naming them."""
    per = pd.DataFrame(
        dict(
            spec_id=[2, 9, 11, 13],
            offset_px=[0.005, 3.02, -0.006, -3.73],
            err_px=0.006,
            outlier=[False, True, False, True],
        )
    )
    flat = np.ones(GRID.n)
    row = survey_row(GRID, 'ges', per, flat, np.zeros(GRID.n), np.ones(GRID.n, bool))
    assert row['outliers'] == [9, 13] and row['n_outliers'] == 2 and row['scatter_px'] < 0.02
    row['offset_px'] = row['offset_err_px'] = 0.0  # a stack on the lines
    check_alignment(pd.DataFrame([row]))
    per.loc[0, ['offset_px', 'outlier']] = [1.2, True]
    row = {
        **survey_row(GRID, 'ges', per, flat, np.zeros(GRID.n), np.ones(GRID.n, bool)),
        'offset_px': 0.0,
        'offset_err_px': 0.0,
    }
    with pytest.raises(MisalignedGridError, match=r'ges: 3 of 4 spectra individually off by > 0.5 px \(2, 9, 13\)'):
        check_alignment(pd.DataFrame([row]))
