"""The `evaluate` stage from the command line: bad input gets one clear line and a non-zero exit, and nothing is written.
The sections themselves are tested in nbs/09a_results.ipynb, which runs the whole pipeline on a tiny mock sky."""
import os, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_training import SMALL, mock_store                                     # a regridded store of mock stars
from stellar_spectra.training import run_training

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'PATH': f'{BIN}{os.pathsep}{os.environ.get("PATH", "")}', 'OMP_NUM_THREADS': '1'}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('eval')
    st = mock_store(tmp / 'regridded.h5', n_stars=21)
    (tmp / 'params.yaml').write_text(yaml.safe_dump(dict(train={**SMALL, 'steps': 3, 'eval_every': 3, 'train_frac': 0.6, 'val_frac': 0.2})))
    run_training(st['path'], tmp / 'model', tmp / 'params.yaml', device='cpu', progress=False)
    return dict(tmp=tmp, store=st['path'], model=tmp / 'model')


def evaluate(*args):
    return subprocess.run([BIN / 'stellar-spectra', 'evaluate', *map(str, args), '--no-progress'], capture_output=True, text=True, env=ENV, timeout=300)


def test_missing_truth_model_or_columns_is_one_clear_line(trained, tmp_path):
    t = trained
    r = evaluate('--store', t['store'], '--model', t['model'], '--truth', tmp_path / 'nowhere', '--outdir', tmp_path / 'out')
    assert r.returncode != 0 and 'nowhere/stars.parquet: no truth table' in r.stderr.replace('\\', '/'), r.stderr
    assert 'Traceback' not in r.stderr and not (tmp_path / 'out').exists()

    r = evaluate('--store', t['store'], '--model', tmp_path, '--truth', tmp_path, '--outdir', tmp_path / 'out')
    assert r.returncode != 0 and 'no checkpoint at' in r.stderr and not (tmp_path / 'out').exists(), r.stderr

    truth = tmp_path / 'sky' / 'truth'; truth.mkdir(parents=True)                # the right files, a column short
    pd.DataFrame(dict(star_index=[0], anomaly=[''], teff=[5000.], logg=[4.], fe_h=[0.])).to_parquet(truth / 'stars.parquet')
    pd.DataFrame(dict(survey=['galah'], star_index=[0], relpath=['x.fits'], rv_file=[0.])).to_parquet(truth / 'observations.parquet')
    r = evaluate('--store', t['store'], '--model', t['model'], '--truth', tmp_path / 'sky', '--outdir', tmp_path / 'out')
    assert r.returncode != 0 and 'stars.parquet: the truth has no column alpha_fe' in r.stderr, r.stderr

    pd.DataFrame(dict(star_index=[0], anomaly=[''], teff=[5000.], logg=[4.], fe_h=[0.], alpha_fe=[0.])).to_parquet(truth / 'stars.parquet')
    r = evaluate('--store', t['store'], '--model', t['model'], '--truth', tmp_path / 'sky', '--outdir', tmp_path / 'out')
    assert r.returncode != 0 and "the store's meta has no column source" in r.stderr, r.stderr   # a store not written by `store`
    assert not (tmp_path / 'out').exists()


def test_unknown_option_in_params(trained, tmp_path):
    (tmp_path / 'p.yaml').write_text('evaluate:\n  map_step: 3\n')
    r = evaluate('--store', trained['store'], '--model', trained['model'], '--truth', tmp_path, '--outdir', tmp_path / 'out', '--params', tmp_path / 'p.yaml')
    assert r.returncode != 0 and "unknown evaluate options ['map_step']" in r.stderr, r.stderr
