"""Cross-match against the truth of the mock sky: completeness and purity with and without proper motions, fast
movers, crowded fields, bad input, the Parquet/JSON outputs and the real mock-sky layout."""

import json
from itertools import combinations
from pathlib import Path
import numpy as np, pandas as pd, pytest
from astropy.table import Table
from stellar_spectra.mock.population import draw_stars, make_catalogues
from stellar_spectra.io.catalogues import CATALOGUES
from stellar_spectra.pipeline.crossmatch import FLAGS, IDS, crossmatch_surveys, score_against_truth

N_STARS, SEED = 30_000, 5


def write_catalogues(root, stars, seed=SEED, change=None):
    "The three catalogues of `stars` under `root` in the archive layout; `change(name, table)` may edit them."
    for name, t in make_catalogues(stars, seed=seed).items():
        if change:
            t = change(name, t)
        p = Path(root) / CATALOGUES[name]['path']
        p.parent.mkdir(parents=True, exist_ok=True)
        t.write(p, overwrite=True)
    return Path(root)


def members(t, stars):
    "Per survey, the truth star index of each output row's member (-1: none)."
    key = {
        s: {v: i for v, i, h in zip(np.asarray(stars[c]).tolist(), range(len(stars)), stars[f'in_{s}']) if h}
        for s, c in IDS.items()
    }
    return {
        s: np.array([key[s][v] if h else -1 for v, h in zip(np.asarray(t[c]).tolist(), t[f'in_{s}'])])
        for s, c in IDS.items()
    }


def false_pairs(t, stars):
    """Rows pairing two different true stars: (silent, flagged, chance). `silent`: one of the two had its true partner
    in the other catalogue and the row is not flagged ambiguous; `flagged`: the same but flagged; `chance`: neither
    star has a counterpart in the other survey (a chance alignment no positional match can tell from a true pair)."""
    who, out = members(t, stars), np.zeros(3, int)
    amb = (np.asarray(t['xm_flags']) & FLAGS['AMBIGUOUS']) > 0
    for a, b in combinations(IDS, 2):
        bad = np.flatnonzero((who[a] >= 0) & (who[b] >= 0) & (who[a] != who[b]))
        ia, ib = who[a][bad], who[b][bad]
        av = np.asarray(stars[f'in_{b}'])[ia] | np.asarray(stars[f'in_{a}'])[ib]
        out += [(av & ~amb[bad]).sum(), (av & amb[bad]).sum(), (~av).sum()]
    return tuple(int(x) for x in out)


@pytest.fixture(scope='module')
def sky(tmp_path_factory):
    stars = draw_stars(N_STARS, seed=SEED)
    return write_catalogues(tmp_path_factory.mktemp('sky'), stars), stars


@pytest.fixture(scope='module')
def matched(sky, tmp_path_factory):
    root, stars = sky
    out = tmp_path_factory.mktemp('xm') / 'common_stars.parquet'
    summary = crossmatch_surveys(root, out, progress=False)
    return Table.read(out), summary, out


def test_complete_and_pure(matched, sky):
    t, summary, _ = matched
    stars = sky[1]
    sc = score_against_truth(t, stars)
    assert sc['total']['true'] > 5000
    assert sc['total']['completeness'] >= 0.999, sc
    assert sc['total']['fast_true'] >= 10 and sc['total']['fast_found'] >= sc['total']['fast_true'] - 1, sc
    silent, flagged, chance = false_pairs(t, stars)
    assert silent == 0 and flagged <= 0.0002 * len(t), (silent, flagged)
    # chance alignments of two stars each seen by one survey only (no positional method can split them) stay rare
    assert chance <= 0.0005 * len(t), chance
    assert len(t) <= len(stars) + 5 and summary['counts']['rows'] == len(t)


def test_without_proper_motions_loses_stars(sky, tmp_path):
    root, stars = sky
    crossmatch_surveys(root, tmp_path / 'x.parquet', use_proper_motion=False, progress=False)
    sc = score_against_truth(Table.read(tmp_path / 'x.parquet'), stars)
    assert sc['total']['completeness'] < 0.997, sc  # epochs 2000 vs 2015.5: nearby stars have moved > 1"
    assert sc['total']['fast_found'] <= sc['total']['fast_true'] // 2, sc


def test_counts_and_columns(matched, sky):
    t, summary, out = matched
    c = summary['counts']
    stars = sky[1]
    for s in CATALOGUES:
        assert t[f'in_{s}'].sum() == stars[f'in_{s}'].sum()  # every catalogue row appears exactly once
        assert len(set(t[f'row_{s}'][t[f'in_{s}']])) == stars[f'in_{s}'].sum()
    assert c['all'] == int((t['n_surveys'] == 3).sum())
    assert c['apogee+galah'] >= c['all'] and c['apogee only'] + c['galah only'] + c['ges only'] == int(
        (t['n_surveys'] == 1).sum()
    )
    for k in [
        'apogee_id',
        'sobject_id',
        'cname',
        'teff_apogee',
        'fe_h_galah',
        'rv_ges',
        'ra_galah',
        'sep_apogee_galah',
        'gaia_source_id',
        'gaia_id_agree',
        'xm_flags',
        'pmra',
    ]:
        assert k in t.colnames, k
    assert json.loads(out.with_suffix('.json').read_text())['counts'] == c
    both = t['in_apogee'] & t['in_galah']
    assert (t['gaia_id_agree'][both] != 0).all() and (t['gaia_id_agree'][both] == 1).mean() > 0.97
    assert np.nanmax(t['sep_apogee_galah']) <= 1.0
    # stars without proper motions are kept and flagged
    no_pm = (t['xm_flags'] & FLAGS['NO_PM']) > 0
    assert no_pm.sum() > 0 and np.isnan(t['pmra'][no_pm]).all() and (t['pm_source'][~no_pm] != '').all()
    assert ((t['xm_flags'] & FLAGS['PM_PARTIAL']) > 0).sum() > 0
    assert not list(out.parent.glob('*.part'))


def test_crowded_field_flags_ambiguous(tmp_path):
    stars = draw_stars(8000, seed=2, crowded_fraction=0.3)
    root = write_catalogues(tmp_path / 'sky', stars, seed=2)
    radius = 2.0
    crossmatch_surveys(root, tmp_path / 'c.parquet', radius_arcsec=radius, progress=False)
    t = Table.read(tmp_path / 'c.parquet')
    silent, flagged, _ = false_pairs(t, stars)
    assert silent == 0
    assert score_against_truth(t, stars)['total']['completeness'] >= 0.999
    # a mover and its host, both in APOGEE and GALAH, closer than the radius: both rows must be flagged
    who = members(t, stars)
    row_of = {i: k for k, i in enumerate(who['apogee']) if i >= 0}
    cats = make_catalogues(stars, seed=2)
    pos = {
        i: (r, d) for i, r, d in zip(np.flatnonzero(stars['in_apogee']), cats['apogee']['RA'], cats['apogee']['DEC'])
    }
    close = 0
    for m in np.flatnonzero((stars['crowded_partner'] >= 0) & stars['in_apogee'] & stars['in_galah']):
        h = int(stars['crowded_partner'][m])
        if h not in pos:
            continue
        (r1, d1), (r2, d2) = pos[m], pos[h]
        sep = np.hypot((r1 - r2) * np.cos(np.radians(d1)), d1 - d2) * 3600
        if sep < radius - 0.3:  # comfortably inside: the other survey's counterpart is a candidate too
            close += 1
            # ambiguous, or the other candidate refused for its different Gaia source id
            flag = FLAGS['AMBIGUOUS'] | FLAGS['GAIA_VETO']
            assert t['xm_flags'][row_of[m]] & flag and t['xm_flags'][row_of[h]] & flag
    assert close >= 20


def _drop(col):
    return lambda name, t: (t.remove_column(col), t)[1] if name == 'apogee' else t


def _nan_row(col, k=3):
    def f(name, t):
        if name == 'apogee':
            t[col] = np.asarray(t[col], float)
            t[col][k] = np.nan
        return t

    return f


def _dup(name, t):
    if name == 'galah':
        t['sobject_id'][5] = t['sobject_id'][9]
    return t


@pytest.mark.parametrize(
    'change, message',
    [
        (_drop('DEC'), "lacks column(s) ['DEC']"),
        (_nan_row('RA'), '1 rows with invalid RA'),
        (_dup, '1 duplicated identifiers'),
    ],
)
def test_bad_input_stops_with_a_clear_message(tmp_path, change, message):
    stars = draw_stars(300, seed=4)
    root = write_catalogues(tmp_path / 'sky', stars, seed=4, change=change)
    with pytest.raises(ValueError, match=r'\.fits: ') as e:
        crossmatch_surveys(root, tmp_path / 'o.parquet', progress=False)
    assert message in str(e.value)
    assert not list(tmp_path.glob('o.*'))  # nothing written


def test_nan_proper_motions_kept_and_flagged(tmp_path):
    stars = draw_stars(2000, seed=6)

    def nan_pm(name, t):
        if name == 'apogee':
            for c in ['GAIAEDR3_PMRA', 'GAIAEDR3_PMDEC']:
                t[c][:200] = np.nan
        return t

    root = write_catalogues(tmp_path / 'sky', stars, seed=6, change=nan_pm)
    s = crossmatch_surveys(root, tmp_path / 'o.parquet', progress=False)
    t = Table.read(tmp_path / 'o.parquet')
    assert t['in_apogee'].sum() == stars['in_apogee'].sum()  # no star dropped
    first = np.isin(t['row_apogee'], np.arange(200))
    assert ((t['xm_flags'][first] & (FLAGS['NO_PM'] | FLAGS['PM_PARTIAL'])) > 0).all()
    assert false_pairs(t, stars)[0] == 0 and s['counts']['flags']['NO_PM'] > 0


def test_explicit_paths_and_dedupe(tmp_path):
    stars = draw_stars(500, seed=8)
    root = write_catalogues(tmp_path / 'sky', stars, seed=8, change=_dup)
    paths = {s: str(root / CATALOGUES[s]['path']) for s in CATALOGUES}
    s = crossmatch_surveys(None, tmp_path / 'o.parquet', dedupe=True, progress=False, **paths)
    assert any('duplicated rows dropped' in n for n in s['notes'])
    assert s['counts']['rows'] >= len(stars) - 2


def test_real_mock_sky_layout(tmp_path):
    from stellar_spectra.mock import mocksky

    mocksky.generate_mock_sky(tmp_path / 'sky', n_stars=12, seed=3, progress=False)
    s = crossmatch_surveys(tmp_path / 'sky', tmp_path / 'o.parquet', progress=False)
    t = Table.read(tmp_path / 'o.parquet')
    stars = Table.from_pandas(pd.read_parquet(tmp_path / 'sky' / 'truth' / 'stars.parquet'))
    assert len(t) == len(stars) and false_pairs(t, stars) == (0, 0, 0)
    assert score_against_truth(t, stars)['total']['completeness'] == 1.0


def test_cli(sky, tmp_path):
    from stellar_spectra.cli import main

    main(
        [
            'crossmatch',
            '--src',
            str(sky[0]),
            '--out',
            str(tmp_path / 'cli.parquet'),
            '--radius-arcsec',
            '0.8',
            '--no-progress',
        ]
    )
    s = json.loads((tmp_path / 'cli.json').read_text())
    assert s['radius_arcsec'] == 0.8 and s['counts']['rows'] == len(Table.read(tmp_path / 'cli.parquet'))
