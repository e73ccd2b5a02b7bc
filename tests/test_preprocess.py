"""The preprocess stage end to end on a tiny mock sky: a run killed with SIGKILL resumes to a complete, duplicate-free
store; a Dask LocalCluster of two workers writes the same arrays as the serial path, bit for bit; a bad spectrum file is
reported in the summary, not fatal; a wrong velocity trips the alignment guard; the arrays are, bit for bit, those of
the whole-grid recipe the stage used before its speed-ups (issue #15)."""

import json, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pytest
from stellar_spectra.mock.mocksky import generate_mock_sky
from stellar_spectra.pipeline.crossmatch import crossmatch_surveys
from stellar_spectra.pipeline.preprocess import run_preprocess, work_plan
from stellar_spectra.pipeline.alignment import MisalignedGridError
from stellar_spectra.pipeline.storage import merge_shards, completed_shards
from stellar_spectra.pipeline.regridded import open_regridded

FIELDS = ('flux', 'ivar', 'norm_flux', 'norm_ivar', 'flags', 'weight')


@pytest.fixture(scope='module')
def sky(tmp_path_factory):
    "A tiny mock sky with spectra of all three surveys, and its cross-match."
    root = tmp_path_factory.mktemp('sky')
    generate_mock_sky(root, n_stars=6, seed=14, progress=False)
    xm = crossmatch_surveys(root, root / 'xm' / 'common_stars.parquet', progress=False)['out']
    return root, Path(xm)


def merged(outdir, tmp):
    "Merge a stage's shards; (metadata, arrays) of the final store."
    merge_shards(Path(outdir) / 'shards', tmp, progress=False)
    with open_regridded(Path(tmp) / 'regridded.h5') as st:
        return st.meta.copy(), st.load(FIELDS)


@pytest.fixture(scope='module')
def serial(sky, tmp_path_factory):
    "The uninterrupted serial run: the reference."
    out = tmp_path_factory.mktemp('serial')
    summary = run_preprocess(*sky, out, chunk_size=2, n_workers=0, progress=False)
    return out, summary, merged(out, tmp_path_factory.mktemp('serial_store'))


def test_serial_complete(sky, serial):
    out, summary, (meta, arr) = serial
    plan = work_plan(*sky)
    assert summary['errors'] == [] and summary['n_spectra'] == len(plan) == len(meta)
    assert set(plan['survey']) == {'apogee', 'galah', 'ges'}
    assert not meta.duplicated(['survey', 'source', 'visit_id']).any()
    assert sorted(meta['plan_id']) == list(range(len(plan)))
    for f in ('alignment.csv', 'summary.json', 'plan.parquet'):
        assert (out / f).is_file()
    assert set(pd.read_csv(out / 'alignment.csv')['survey']) == {'apogee', 'galah', 'ges'}
    assert (arr['weight'][arr['norm_ivar'] == 0] == 0).all()
    apo = meta['survey'].to_numpy() == 'apogee'
    assert (meta['rv_used'][apo] == 0).all() and (meta['rv_used'][~apo] != 0).all()


def test_dask_two_workers_bit_identical(sky, serial, tmp_path):
    out, _, (meta0, arr0) = serial
    summary = run_preprocess(*sky, tmp_path / 'dask', chunk_size=2, n_workers=2, progress=False)
    assert summary['errors'] == [] and summary['chunks']['run'] == summary['chunks']['total']
    meta1, arr1 = merged(tmp_path / 'dask', tmp_path / 'dask_store')
    pd.testing.assert_frame_equal(meta0, meta1)
    for k in FIELDS:
        assert np.array_equal(arr0[k], arr1[k]), k  # bit-identical (NaN-free arrays)


SCRIPT = """
import sys, time
import stellar_spectra.pipeline.preprocess as pp
_chunk = pp.process_chunk
def slow(*a, **k):  # a slow worker, so that the kill lands mid-stage
    r = _chunk(*a, **k); time.sleep(0.5); return r
pp.process_chunk = slow
pp.run_preprocess(sys.argv[1], sys.argv[2], sys.argv[3], chunk_size=2, n_workers=0, progress=False)
"""


def test_sigkill_resume(sky, serial, tmp_path):
    out = tmp_path / 'killed'
    n_plan = len(work_plan(*sky))
    p = subprocess.Popen([sys.executable, '-c', SCRIPT, str(sky[0]), str(sky[1]), str(out)])
    t0 = time.time()
    while len(completed_shards(out / 'shards')) < 2 if (out / 'shards').is_dir() else True:
        assert p.poll() is None, 'the stage finished or failed before it could be killed'
        assert time.time() - t0 < 120
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = completed_shards(out / 'shards')
    assert 2 <= len(done) < -(-n_plan // 2), 'killed mid-stage'
    assert not (out / 'summary.json').exists()
    summary = run_preprocess(*sky, out, chunk_size=2, n_workers=0, progress=False)
    assert summary['chunks']['skipped'] == len(done) and summary['chunks']['total'] == -(-n_plan // 2)
    meta, arr = merged(out, tmp_path / 'store')
    meta0, arr0 = serial[2]
    assert len(meta) == n_plan and not meta.duplicated(['survey', 'source', 'visit_id']).any()
    pd.testing.assert_frame_equal(meta.drop(columns='offset_px'), meta0.drop(columns='offset_px'), check_dtype=False)
    for k in FIELDS:
        assert np.array_equal(arr0[k], arr[k]), k


def test_bad_file_reported(sky, tmp_path):
    root = tmp_path / 'sky'
    shutil.copytree(sky[0], root, symlinks=True)
    plan = work_plan(root, sky[1])
    bad = plan[plan.survey == 'ges'].relpath.iloc[0]
    data = (root / bad).read_bytes()
    (root / bad).write_bytes(data[: len(data) // 2])  # truncated
    summary = run_preprocess(root, sky[1], tmp_path / 'out', chunk_size=2, n_workers=0, progress=False)
    assert [e['file'] for e in summary['errors']] == [bad]
    assert 'truncated' in summary['errors'][0]['problem']
    assert summary['counts']['ges']['failed'] == 1
    saved = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert saved['errors'] == summary['errors']
    meta, _ = merged(tmp_path / 'out', tmp_path / 'store')
    assert len(meta) == len(plan) - 1 and bad not in set(meta['source'])


def test_wrong_velocity_fails_guard(sky, tmp_path):
    xm = pd.read_parquet(sky[1])
    xm['rv_galah'] = xm['rv_galah'] + 25.0  # 2.5 grid pixels
    p = tmp_path / 'common_stars.parquet'
    xm.to_parquet(p)
    with pytest.raises(MisalignedGridError):
        run_preprocess(sky[0], p, tmp_path / 'out', chunk_size=4, n_workers=0, progress=False)
    saved = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert saved['aligned'] is False and 'galah' in saved['misaligned']


def test_existing_scheduler(sky, serial, tmp_path):
    import logging
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR) as c:
        summary = run_preprocess(*sky, tmp_path / 'sched', chunk_size=2, scheduler=c.scheduler_address, progress=False)
    assert summary['scheduler'] == c.scheduler_address and summary['errors'] == []
    meta, arr = merged(tmp_path / 'sched', tmp_path / 'store')
    for k in FIELDS:
        assert np.array_equal(serial[2][1][k], arr[k]), k


def test_unreadable_chunk_and_truncated_galah_camera(sky, tmp_path):
    """A chunk none of whose files can be read writes an empty shard and its report (no crash in h5py); a GALAH star
    whose second camera is truncated is reported under that camera's file, not under the first camera the plan names."""
    from stellar_spectra.formats import galah_filename

    root = tmp_path / 'sky'
    shutil.copytree(sky[0], root, symlinks=True)
    plan = work_plan(root, sky[1])
    first = plan.relpath.iloc[:2].tolist()  # the first chunk (chunk_size=2)
    for rel in first:
        (root / rel).write_bytes((root / rel).read_bytes()[:5000])
    g = plan[(plan.survey == 'galah') & (plan.spec_id >= 2)].iloc[0]
    cam2 = str(Path(g.relpath).with_name(galah_filename(int(g.survey_id), 2)))
    assert cam2 != g.relpath and (root / cam2).is_file()
    (root / cam2).write_bytes((root / cam2).read_bytes()[:5000])
    summary = run_preprocess(root, sky[1], tmp_path / 'out', chunk_size=2, n_workers=0, progress=False)
    files = {e['file']: e for e in summary['errors']}
    assert set(files) == {*first, cam2}
    assert files[cam2]['relpath'] == g.relpath and 'truncated' in files[cam2]['problem']
    assert '000000000' in completed_shards(tmp_path / 'out' / 'shards')
    rep = json.loads((tmp_path / 'out' / 'reports' / '000000000.json').read_text())
    assert rep['n'] == 0 and len(rep['errors']) == 2
    meta, _ = merged(tmp_path / 'out', tmp_path / 'store')
    assert len(meta) == len(plan) - 3 and not {*first, g.relpath} & set(meta['source'])


@pytest.mark.parametrize(
    'kw,what',
    [
        (dict(chunk_size=0), 'chunk_size must be an integer >= 1'),
        (dict(n_workers=-1), 'n_workers must be an integer >= 0'),
        (dict(method='spline'), "unknown continuum method 'spline'"),
        (dict(tol_px=float('inf')), 'tol_px must be a finite number > 0'),
        (dict(tol_px=-0.1), 'tol_px must be a finite number > 0'),
    ],
)
def test_stage_parameters_checked_at_start(sky, tmp_path, kw, what):
    from stellar_spectra.pipeline.continuum import METHODS

    with pytest.raises(ValueError, match=what) as e:
        run_preprocess(*sky, tmp_path / 'out', progress=False, **kw)
    if 'method' in kw:
        assert str(list(METHODS)) in str(e.value)
    assert not (tmp_path / 'out').exists()  # refused before anything was read or written


def test_store_refuses_shards_of_a_failed_guard(sky, tmp_path):
    from stellar_spectra.pipeline.regridded import StoreError

    xm = pd.read_parquet(sky[1])
    xm['rv_ges'] = xm['rv_ges'] + 25.0
    p = tmp_path / 'common_stars.parquet'
    xm.to_parquet(p)
    with pytest.raises(MisalignedGridError):
        run_preprocess(sky[0], p, tmp_path / 'out', chunk_size=4, n_workers=0, progress=False)
    with pytest.raises(StoreError, match='summary.json: the preprocess run failed its alignment guard'):
        merge_shards(tmp_path / 'out' / 'shards', tmp_path / 'store', progress=False)
    assert not (tmp_path / 'store' / 'regridded.h5').exists()
    r = subprocess.run(
        [
            sys.executable,
            '-c',
            'from stellar_spectra.cli import main; main()',
            'store',
            str(tmp_path / 'out' / 'shards'),
            str(tmp_path / 'store'),
            '--no-progress',
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and 'failed its alignment guard' in r.stderr


@pytest.fixture(scope='module')
def sky_seed2(tmp_path_factory):
    """The 8-star mock sky of seed 2: two of its four Gaia-ESO spectra are injected anomalies (a wrong wavelength
    solution, an SB2)."""
    root = tmp_path_factory.mktemp('sky2')
    generate_mock_sky(root, n_stars=8, seed=2, progress=False)
    return root, Path(crossmatch_surveys(root, root / 'xm' / 'common_stars.parquet', progress=False)['out'])


def test_outliers_named_not_fatal(sky_seed2, tmp_path):
    summary = run_preprocess(
        *sky_seed2, tmp_path / 'out', n_workers=0, progress=False
    )  # used to fail: ges scatter 2.2 px
    assert summary['aligned']
    ges = next(r for r in summary['alignment'] if r['survey'] == 'ges')
    assert ges['n_outliers'] == 2 and ges['scatter_px'] < 0.1
    out = pd.DataFrame(summary['outliers'])
    assert (out.survey == 'ges').sum() == 2 and sorted(ges['outliers']) == sorted(
        out.loc[out.survey == 'ges', 'spec_id']
    )
    obs = pd.read_parquet(sky_seed2[0] / 'truth' / 'observations.parquet')
    assert set(obs.loc[obs.fault == 'wrong_wavelength', 'relpath']) <= set(out.relpath)  # the injected fault is named
    meta, arr = merged(tmp_path / 'out', tmp_path / 'store')
    bad = meta['plan_id'].isin(out.spec_id).to_numpy()
    assert bad.sum() == len(out) and (arr['weight'][bad] == 0).all() and (arr['weight'][~bad].sum(1) > 0).all()


# --- the speed-ups of issue #15 leave the arrays as they were
# -----------------------------------------------------------


def whole_grid_flags(grid, r, flags, bad, min_weight=0.1):
    """`masks.flags_on_grid` as it was written before: every bit plane a column of one dense matrix, one sparse product,
    the whole grid."""
    from stellar_spectra.spectrum import BAD, PixelFlag as P

    f = np.atleast_2d(flags).astype(np.int64)
    N, A, hole = len(f), r.A, int(P.NO_DATA | P.DETECTOR_GAP)

    def planes(f, bits):
        X = np.empty((f.shape[1], len(bits) * N))
        for k, b in enumerate(bits):
            X[:, k * N : (k + 1) * N] = ((f & b) != 0).T
        return np.asarray(A @ X).reshape(A.shape[0], len(bits), N)

    present = int(np.bitwise_or.reduce(f, axis=None))
    bits = [1 << k for k in range(present.bit_length()) if present >> k & 1]
    prop = np.zeros((N, A.shape[0]), np.int32)
    tot = np.asarray(A.sum(1)).ravel()
    if bits:
        w = planes(f, bits)
        need = np.where(tot > 1e-3, min_weight * tot * (1 - 1e-9), np.inf)
        for k, b in enumerate(bits):
            prop |= np.where(w[:, k, :].T >= need, b, 0).astype(np.int32)
    covered = planes(np.where((f & hole) == 0, 1, 0), [1])[:, 0, :].T >= (1 - r.max_masked) * (1 - 1e-9)
    j = np.arange(covered.shape[1])
    any_ = covered.any(1)
    lo = np.where(any_, covered.argmax(1), covered.shape[1])
    hi = np.where(any_, covered.shape[1] - 1 - covered[:, ::-1].argmax(1), -1)
    inside = (j >= lo[:, None]) & (j <= hi[:, None])
    prop &= ~np.int32(hole)
    out = np.full((N, grid.n), int(P.NO_DATA), np.int32)
    full_bad = np.ones((N, grid.n), bool)
    full_bad[:, r.sl] = bad
    out[:, r.sl] = np.where(inside, np.where(covered, prop, prop | int(P.DETECTOR_GAP)), int(P.NO_DATA))
    out[full_bad & ((out & int(BAD)) == 0)] |= int(P.BAD_PIXEL)
    return out[0]


def whole_grid_recipe(spec, grid, rv):
    """`preprocess_spectrum` as it was written before: flags on the whole grid by sparse products, the continuum's loop
    over every block of the grid (`continuum._usable_span` set to the whole grid by the caller), the weights and the
    float32 casts on whole-grid arrays."""
    from stellar_spectra.pipeline.preprocess import regrid
    from stellar_spectra.pipeline.resample import grid_wave
    from stellar_spectra.pipeline.masks import flag_atmosphere, loss_weights
    from stellar_spectra.pipeline.continuum import normalise
    from stellar_spectra.spectrum import PixelFlag as P

    s = flag_atmosphere(spec)
    r = regrid(s, grid, rv=None if not np.isfinite(rv) else float(rv))
    rs = r['resampler']
    seg = [(a, b) for _, a, b in s.meta.get('segments', [])] if len(s.meta.get('segments', [])) > 1 else [(0, len(s))]
    flags = np.full(grid.n, int(P.NO_DATA), np.int32)
    for (a, b), q in zip(seg, rs):
        flags[q.sl] = whole_grid_flags(grid, q, s.flags[a:b], r['bad'][q.sl])[q.sl]
    for q0, q1 in zip(rs[:-1], rs[1:]):
        flags[q0.sl.stop : q1.sl.start] = P.DETECTOR_GAP
    nf, ni = normalise(grid_wave(grid), r['flux'], r['ivar'], mask=r['bad'])
    return dict(
        flux=r['flux'].astype(np.float32),
        ivar=r['ivar'].astype(np.float32),
        norm_flux=nf.astype(np.float32),
        norm_ivar=ni.astype(np.float32),
        flags=flags,
        weight=loss_weights(flags, ni),
    )


@pytest.mark.parametrize('which', ['sky', 'sky_seed2'])
def test_arrays_as_before(which, request, tmp_path, monkeypatch):
    """Every array the stage hands to the shard writer is, bit for bit, what the whole-grid recipe of before computes
    (flags by sparse products, the continuum over every block, weights on the whole grid; an outlier's weights 0): the
    speed-ups of issue #15 (flags in one compiled pass over the operator, the continuum on the blocks holding data, only
    each spectrum's reach written into the chunk's arrays) change no stored value. The guard's own measurements are
    compiled loops whose sums run in another order than numpy's: they agree with the numpy formulation to ~1e-13 px
    (nbs/05a_alignment tests it)."""
    from stellar_spectra.pipeline import preprocess as pp, continuum
    from stellar_spectra.io.readers import read_spectrum

    root, xm = request.getfixturevalue(which)
    got, write = {}, pp.write_shard

    def capture(shard_dir, key, arrays, meta, native=None, grid=None, **kw):
        got[key] = ({k: v.copy() for k, v in arrays.items()}, meta.copy())
        return write(shard_dir, key, arrays, meta, native, grid=grid, **kw)

    monkeypatch.setattr(pp, 'write_shard', capture)
    run_preprocess(root, xm, tmp_path / 'out', chunk_size=3, n_workers=0, progress=False)
    monkeypatch.setattr(
        continuum, '_usable_span', lambda fin, ivin, m, cp: (0, fin.shape[1])
    )  # the loop over every block, as before
    grid, n = pp.common_grid(), 0
    for arrays, meta in got.values():
        for i, row in enumerate(meta.itertuples()):
            ref = whole_grid_recipe(read_spectrum(root / row.relpath), grid, row.rv)
            if row.outlier:
                ref['weight'][:] = 0
            for k in FIELDS:
                assert arrays[k][i].dtype == ref[k].dtype and np.array_equal(arrays[k][i], ref[k]), (row.relpath, k)
            n += 1
    assert n == len(work_plan(root, xm)) and {m.survey.iloc[0] for _, m in got.values()} <= {'apogee', 'galah', 'ges'}
