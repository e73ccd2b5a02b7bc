"""The seed-scale run (`stellar-spectra scale`, nbs/m5_scale_run) killed mid-way and resumed: every spectrum exactly
once, the store the uninterrupted run makes, finished parts not redone; and its bad settings. The run itself, and its
store against the stage-by-stage pipeline's, are tested in the notebook."""

import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pytest, yaml
from stellar_spectra.pipeline.regridded import open_regridded

BIN = Path(sys.executable).parent
ARGS = ['--n-stars', '40', '--part-stars', '5', '--n-workers', '1', '--until', 'store', '--no-progress']


def scale(outdir, params, *extra, **kw):
    return subprocess.Popen(
        [BIN / 'stellar-spectra', 'scale', '--outdir', str(outdir), '--params', str(params), *ARGS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    )


@pytest.fixture(scope='module')
def params(tmp_path_factory):
    p = tmp_path_factory.mktemp('params') / 'params.yaml'
    p.write_text(yaml.safe_dump(dict(scale=dict(seed=7, overlap=dict(A=0.2, G=0.2, E=0.1, AGE=0.5)))))
    return p


def store_of(outdir):
    with open_regridded(Path(outdir) / 'store' / 'regridded.h5') as st:
        return st.meta, st.read(np.arange(len(st)), fields=st.fields)


def test_killed_run_resumes_every_spectrum_once(tmp_path, params):
    whole = scale(tmp_path / 'whole', params)
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    run = tmp_path / 'killed'
    p = scale(run, params)
    t0 = time.time()
    while not (run / 'parts' / 'part_0002.json').is_file():  # kill it once three of its eight parts are done
        assert p.poll() is None and time.time() - t0 < 300, p.communicate()[1]
        time.sleep(0.01)
    time.sleep(0.2)  # ... somewhere inside the fourth
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    done = {q.name: q.stat().st_mtime_ns for q in (run / 'parts').glob('part_*.json')}
    assert 3 <= len(done) < 8, sorted(done)
    assert not (run / 'store').exists()
    again = scale(run, params)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    summary = json.loads(out)
    assert {
        q.name: q.stat().st_mtime_ns for q in (run / 'parts').glob('part_*.json') if q.name in done
    } == done  # not redone
    assert summary['n_parts'] == 8 and not any((run / 'raw').glob('part_*'))
    meta, arrays = store_of(run)
    assert not meta.duplicated(['survey', 'source', 'visit_id']).any()
    recs = [json.loads(q.read_text()) for q in sorted((run / 'parts').glob('part_*.json'))]
    assert len(meta) == summary['store_spectra'] == sum(r['n_spectra'] - r['errors'] for r in recs)
    m0, a0 = store_of(tmp_path / 'whole')
    pd.testing.assert_frame_equal(meta, m0)
    for k in a0:
        np.testing.assert_array_equal(arrays[k], a0[k], err_msg=k)
    # every observation of the truth that a cross-matched star's plan names is in the store
    plans = pd.concat([pd.read_parquet(run / 'preprocess' / r['name'] / 'plan.parquet') for r in recs])
    assert set(plans['relpath']) >= set(meta['source'])
    assert len(plans) == len(meta) + sum(r['errors'] for r in recs)


def test_bad_settings_exit_2_before_writing(tmp_path, params):
    for extra, words in (
        (['--until', 'results'], "invalid choice: 'results'"),
        (['--n-stars', '0'], 'n_stars must be an integer >= 1'),
        (['--grid', 'R=ten'], 'grid: expected'),
    ):
        p = scale(tmp_path / 'x', params, *extra)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2 and words in err, err
        assert not (tmp_path / 'x').exists()
    bad = tmp_path / 'bad.yaml'
    bad.write_text(yaml.safe_dump(dict(scale=dict(n_starz=3))))
    p = scale(tmp_path / 'x', bad)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and 'unknown scale options' in err and str(bad) in err, err


def test_grid_from_params_and_recorded(tmp_path):
    "The run resamples onto params.yaml's grid: section, records it, and refuses to resume a folder made on another."
    from stellar_spectra.pipeline.resample import common_grid

    p = tmp_path / 'params.yaml'
    p.write_text(yaml.safe_dump(dict(grid=dict(R=5000, wmax=16000.0), scale=dict(seed=7))))
    run = scale(tmp_path / 'run', p, '--n-stars', '6')
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    with open_regridded(tmp_path / 'run' / 'store' / 'regridded.h5') as st:
        assert st.grid == common_grid(R=5000, wmax=16000.0) != common_grid() and len(st) > 0
    assert json.loads((tmp_path / 'run' / 'scale.json').read_text())['grid'] == st.grid.to_dict()
    before = {q: q.stat().st_mtime_ns for q in (tmp_path / 'run').rglob('*') if q.is_file()}
    again = scale(tmp_path / 'run', p, '--n-stars', '6', '--grid', 'R=10000')
    out, err = again.communicate(timeout=120)
    assert again.returncode == 2 and 'made with other settings (grid:' in err, err
    assert {q: q.stat().st_mtime_ns for q in (tmp_path / 'run').rglob('*') if q.is_file()} == before
    p.write_text(yaml.safe_dump(dict(grid=dict(R=5000, pixels=3))))
    bad = scale(tmp_path / 'x', p)
    out, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and "grid: unknown ['pixels']" in err and not (tmp_path / 'x').exists(), err
