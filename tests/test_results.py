"""The `evaluate` stage from the command line: bad input gets one clear line and a non-zero exit, and nothing is
written. The sections themselves are tested in nbs/09a_results.ipynb, which runs the whole pipeline on a tiny mock
sky."""

import os, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_training import SMALL, mock_store  # a regridded store of mock stars
from stellar_spectra.model.training import run_training, pack_store
from stellar_spectra.evaluation.results import (
    LABELS,
    EvalConfig,
    cap_stars,
    evaluate as evaluate_split,
    load_split,
    run_evaluation,
    star_truth,
)

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'PATH': f'{BIN}{os.pathsep}{os.environ.get("PATH", "")}', 'OMP_NUM_THREADS': '1'}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('eval')
    st = mock_store(tmp / 'regridded.h5', n_stars=21)
    (tmp / 'params.yaml').write_text(
        yaml.safe_dump(dict(train={**SMALL, 'steps': 3, 'eval_every': 3, 'train_frac': 0.6, 'val_frac': 0.2}))
    )
    run_training(st['path'], tmp / 'model', tmp / 'params.yaml', device='cpu', progress=False)
    return dict(tmp=tmp, store=st['path'], model=tmp / 'model')


def evaluate(*args):
    return subprocess.run(
        [BIN / 'stellar-spectra', 'evaluate', *map(str, args), '--no-progress'],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


def test_missing_truth_model_or_columns_is_one_clear_line(trained, tmp_path):
    t = trained
    r = evaluate(
        '--store', t['store'], '--model', t['model'], '--truth', tmp_path / 'nowhere', '--outdir', tmp_path / 'out'
    )
    assert r.returncode != 0 and 'nowhere/stars.parquet: no truth table' in r.stderr.replace('\\', '/'), r.stderr
    assert 'Traceback' not in r.stderr and not (tmp_path / 'out').exists()

    r = evaluate('--store', t['store'], '--model', tmp_path, '--truth', tmp_path, '--outdir', tmp_path / 'out')
    assert r.returncode != 0 and 'no checkpoint at' in r.stderr and not (tmp_path / 'out').exists(), r.stderr

    truth = tmp_path / 'sky' / 'truth'
    truth.mkdir(parents=True)  # the right files, a column short
    pd.DataFrame(dict(star_index=[0], anomaly=[''], teff=[5000.0], logg=[4.0], fe_h=[0.0])).to_parquet(
        truth / 'stars.parquet'
    )
    pd.DataFrame(dict(survey=['galah'], star_index=[0], relpath=['x.fits'], rv_file=[0.0])).to_parquet(
        truth / 'observations.parquet'
    )
    r = evaluate(
        '--store', t['store'], '--model', t['model'], '--truth', tmp_path / 'sky', '--outdir', tmp_path / 'out'
    )
    assert r.returncode != 0 and 'stars.parquet: the truth has no column alpha_fe' in r.stderr, r.stderr

    pd.DataFrame(dict(star_index=[0], anomaly=[''], teff=[5000.0], logg=[4.0], fe_h=[0.0], alpha_fe=[0.0])).to_parquet(
        truth / 'stars.parquet'
    )
    r = evaluate(
        '--store', t['store'], '--model', t['model'], '--truth', tmp_path / 'sky', '--outdir', tmp_path / 'out'
    )
    assert r.returncode != 0 and "the store's meta has no column source" in r.stderr, (
        r.stderr
    )  # a store not written by `store`
    assert not (tmp_path / 'out').exists()


def test_unknown_option_in_params(trained, tmp_path):
    (tmp_path / 'p.yaml').write_text('evaluate:\n  map_step: 3\n')
    r = evaluate(
        '--store',
        trained['store'],
        '--model',
        trained['model'],
        '--truth',
        tmp_path,
        '--outdir',
        tmp_path / 'out',
        '--params',
        tmp_path / 'p.yaml',
    )
    assert r.returncode != 0 and "unknown evaluate options ['map_step']" in r.stderr, r.stderr


def tiny_evaluation(t):
    """`load_evaluation`'s dict for the fixture's store and model, with made-up truth (the mock store has no mock sky
    behind it)."""
    from stellar_spectra.pipeline.regridded import open_regridded
    from stellar_spectra.model.gon import load_checkpoint

    store = open_regridded(t['store'])
    model, _, info = load_checkpoint(t['model'] / 'best.pt')
    meta, rng, split = store.meta, np.random.default_rng(0), load_split(t['model'])
    truth = pd.DataFrame(
        dict(
            star=meta['star'].to_numpy(),
            survey=meta['survey'].to_numpy(),
            truth_star=meta['star'].to_numpy(),
            rv_true=0.0,
            anomaly='',
            snr=meta['snr'].to_numpy(),
            **{l: rng.normal(size=len(meta)) for l in LABELS},
        )
    )
    sample = pack_store(store)
    return dict(
        model=model,
        info=info,
        split=split,
        history={},
        grid=store.grid,
        truth=truth,
        star_truth=star_truth(truth),
        **{k: sample.subset(split[k]) for k in ('train', 'val', 'test')},
    )


CHEAP = dict(map_steps=2, n_val_map=3, n_impute=1, pca_iter=2, ae_steps=2, ae_hidden=8, cannon=False)


def test_max_test_stars_evaluates_a_reproducible_subset(trained):
    E = tiny_evaluation(trained)
    test = E['split']['test']
    k = 2
    assert len(test) > k
    runs = [evaluate_split(E, EvalConfig(**CHEAP, max_test_stars=k)) for _ in range(2)]
    for res, spec, stars, fig in runs:
        chosen = np.asarray(stars.index)
        assert len(chosen) == k and set(chosen) <= set(test.tolist()) and set(spec.star) == set(chosen)
        assert list(fig['test'].stars()) == list(chosen)
        assert res['n']['test'] == k and res['n']['test_total'] == len(test) and res['n']['test_spectra'] == len(spec)
        assert res['n']['test_spectra_total'] == len(E['test']) and res['n']['train'] == len(E['split']['train'])
    assert list(runs[0][2].index) == list(runs[1][2].index) == list(cap_stars(test, k, 0))  # same seed, same stars
    res, spec, stars, _ = evaluate_split(E, EvalConfig(**CHEAP))  # default: the whole split
    assert list(stars.index) == sorted(test.tolist()) and res['n']['test'] == res['n']['test_total'] == len(test)
    h = res['peer_history']['autoencoder']  # its validation curve, one entry at the last of its 2 steps
    assert [e['step'] for e in h] == [CHEAP['ae_steps']] and np.isfinite([h[0]['train'], h[0]['val']]).all()


def test_max_test_stars_option_and_typos(trained, tmp_path):
    p = tmp_path / 'p.yaml'
    out = tmp_path / 'out'
    p.write_text('evaluate:\n  max_test_stars: 2\n')  # known: gets as far as the missing truth
    with pytest.raises(FileNotFoundError, match='no truth table'):
        run_evaluation(trained['store'], trained['model'], tmp_path, out, p, progress=False)
    p.write_text('evaluate:\n  max_test_stars: 2\n  max_test_star: 2\n')
    with pytest.raises(ValueError, match=r"unknown evaluate options \['max_test_star'\]"):
        run_evaluation(trained['store'], trained['model'], tmp_path, out, p, progress=False)
    p.write_text('evaluate:\n  max_test_stars: -5\n')
    with pytest.raises(ValueError, match='max_test_stars must be 0'):
        run_evaluation(trained['store'], trained['model'], tmp_path, out, p, progress=False)
    assert not out.exists()
