"""Benchmark of the cross-match: 650,000 x 600,000 stars (uniform over the sky, and clustered in survey-like fields),
catalogue A at epoch 2000.0 (2MASS-like, 1% without proper motions) and B at 2015.5 (Gaia-like), 400,000 stars in
common, 2% fast movers. Compared, each in a fresh subprocess (time: best of 2; memory: peak RSS above the loaded data,
and the tracemalloc peak):

- ours: `stellar_spectra.pipeline.crossmatch.merge_catalogue`: epoch correction, every candidate in the radius,
  one-to-many resolved (and `crossmatch`, which also builds the output table);
- astropy `search_around_sky` (all candidates, no resolution) and `match_to_catalog_sky` (nearest only), both after
  the linear proper-motion shift astroNN's `xmatch` applies (B moved to A's epoch: ra - pmra/cos(dec)*dt);
- bare scipy: one cKDTree on B's unit vectors, `query(k=1)` from A, no epoch correction (orientation only).

Usage: python bench/crossmatch.py [--n1 650000 --n2 600000]    (writes bench/results/crossmatch.md)
"""

import argparse, json, os, platform, subprocess, sys, tempfile, time, tracemalloc
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's stellar_spectra, installed or not
RADIUS = 1.0  # arcsec


def make_data(n1, n2, n_common, layout, seed=0):
    "Truth at 2016.0 and two catalogues: A (epoch 2000, 0.07\" noise), B (epoch 2015.5, 1 mas noise)."
    rng = np.random.default_rng(seed)
    n = n1 + n2 - n_common
    if layout == 'uniform':
        ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    else:  # 300 fields of 1.5 deg radius, stars uniform in each disc, field sizes uneven
        c_ra, c_dec = rng.uniform(0, 360, 300), np.degrees(np.arcsin(rng.uniform(-0.95, 0.95, 300)))
        f = rng.choice(300, n, p=rng.dirichlet(np.ones(300)))
        r, th = 1.5 * np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n)
        dec = np.clip(c_dec[f] + r * np.sin(th), -89.9, 89.9)
        ra = (c_ra[f] + r * np.cos(th) / np.cos(np.radians(dec))) % 360
    fast = rng.random(n) < 0.02
    pm = np.where(fast, rng.uniform(300, 2500, n), np.abs(rng.normal(0, 8, n)))
    pa = rng.uniform(0, 2 * np.pi, n)
    pmra, pmdec = pm * np.sin(pa), pm * np.cos(pa)
    ia, ib = np.arange(n1), np.arange(n1 - n_common, n)  # star index of each catalogue row

    def cat(idx, epoch, sig_mas, pm_sig, miss):
        dt, cd = epoch - 2016.0, np.cos(np.radians(dec[idx]))
        d = dec[idx] + (pmdec[idx] * dt + rng.normal(0, sig_mas, len(idx))) / 3.6e6
        a = (ra[idx] + (pmra[idx] * dt + rng.normal(0, sig_mas, len(idx))) / 3.6e6 / cd) % 360
        m = rng.random(len(idx)) < miss
        return dict(
            ra=a,
            dec=d,
            pmra=np.where(m, np.nan, pmra[idx] + rng.normal(0, pm_sig, len(idx))),
            pmdec=np.where(m, np.nan, pmdec[idx] + rng.normal(0, pm_sig, len(idx))),
            star=idx,
        )

    a, b = cat(ia, 2000.0, 70, 0.03, 0.01), cat(ib, 2015.5, 1, 0.05, 0.0)
    return {f'a_{k}': v for k, v in a.items()} | {f'b_{k}': v for k, v in b.items()}


def astroNN_shift(ra, dec, pmra, pmdec, dt):
    "The linear shift of astroNN's xmatch: positions moved by pm*dt, RA divided by cos(dec); missing pm: no shift."
    pmra, pmdec = np.nan_to_num(pmra), np.nan_to_num(pmdec)
    return ra + pmra / np.cos(np.radians(dec)) / 3.6e6 * dt, dec + pmdec / 3.6e6 * dt


def run_method(method, d, workers):
    "Run one method on the loaded data; returns (pairs: i in A, j in B) of its final matches."
    if method.startswith('ours'):
        from stellar_spectra.io.catalogues import Catalogue
        from stellar_spectra.pipeline.crossmatch import merge_catalogue, crossmatch

        A = Catalogue(
            'apogee', 2000.0, d['a_ra'], d['a_dec'], d['a_pmra'], d['a_pmdec'], np.full(len(d['a_ra']), -1), {}
        )
        B = Catalogue(
            'galah', 2015.5, d['b_ra'], d['b_dec'], d['b_pmra'], d['b_pmdec'], np.full(len(d['b_ra']), -1), {}
        )
        if method == 'ours_table':
            t = crossmatch([A, B], RADIUS, workers=workers)
            m = np.asarray(t['in_apogee'] & t['in_galah'])
            return np.asarray(t['row_apogee'])[m], np.asarray(t['row_galah'])[m]
        rows = {'apogee': np.arange(len(A)), 'flags': np.zeros(len(A), np.int64)}
        rows = merge_catalogue(rows, [A], B, RADIUS, workers=workers)
        m = (rows['apogee'] >= 0) & (rows['galah'] >= 0)
        return rows['apogee'][m], rows['galah'][m]
    if method == 'scipy_kdtree':
        from scipy.spatial import cKDTree
        from stellar_spectra.pipeline.sky_index import unit_vectors, chord

        tree = cKDTree(unit_vectors(d['b_ra'], d['b_dec']))
        dist, j = tree.query(unit_vectors(d['a_ra'], d['a_dec']), k=1, distance_upper_bound=float(chord(RADIUS)))
        ok = np.isfinite(dist)
        return np.flatnonzero(ok), j[ok]
    import astropy.units as u
    from astropy.coordinates import SkyCoord, search_around_sky

    rb, db = astroNN_shift(d['b_ra'], d['b_dec'], d['b_pmra'], d['b_pmdec'], 2000.0 - 2015.5)
    ca, cb = SkyCoord(d['a_ra'] * u.deg, d['a_dec'] * u.deg), SkyCoord(rb * u.deg, db * u.deg)
    if method == 'astropy_match_to_catalog_sky':
        idx, d2d, _ = ca.match_to_catalog_sky(cb)
        ok = d2d < RADIUS * u.arcsec
        return np.flatnonzero(ok), idx[ok]
    i, j, _, _ = search_around_sky(ca, cb, RADIUS * u.arcsec)
    return i, j


def _rss(field):
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def child(method, data, workers):
    "Subprocess body: load, reset the peak RSS, run (memory pass, then a timing pass), print JSON."
    d = dict(np.load(data))
    # imports outside the measurement
    import astropy.units, astropy.coordinates, scipy.spatial, stellar_spectra.pipeline.crossmatch  # noqa: F401

    try:
        Path('/proc/self/clear_refs').write_text('5')  # reset VmHWM (Linux >= 4.0)
    except OSError:
        pass
    base = _rss('VmRSS:')
    t0 = time.perf_counter()
    i, j = run_method(method, d, workers)
    t1 = time.perf_counter()
    peak = _rss('VmHWM:') - base
    times = [t1 - t0]
    t0 = time.perf_counter()
    run_method(method, d, workers)
    times.append(time.perf_counter() - t0)
    tracemalloc.start()
    run_method(method, d, workers)
    tm = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    true = d['a_star'][i] == d['b_star'][j]
    n_true = len(np.intersect1d(d['a_star'], d['b_star']))
    print(
        json.dumps(
            dict(
                method=method,
                workers=workers,
                seconds=min(times),
                rss_mb=peak / 1e6,
                tracemalloc_mb=tm / 1e6,
                pairs=len(i),
                true_pairs=int(true.sum()),
                false_pairs=int((~true).sum()),
                n_true=n_true,
            )
        )
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n1', type=int, default=650_000)
    ap.add_argument('--n2', type=int, default=600_000)
    ap.add_argument('--common', type=int, default=400_000)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'crossmatch.md'))
    ap.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1], int(a.child[2]))
    methods = [
        ('ours', 1),
        ('ours', 2),
        ('ours_table', 1),
        ('astropy_match_to_catalog_sky', 1),
        ('astropy_search_around_sky', 1),
        ('scipy_kdtree', 1),
    ]
    res, tmp, load0 = {}, Path(tempfile.mkdtemp(prefix='bench_xm_')), os.getloadavg()[0]
    for layout in ['uniform', 'clustered']:
        f = tmp / f'{layout}.npz'
        np.savez(f, **make_data(a.n1, a.n2, a.common, layout))
        for m, w in methods:
            out = subprocess.run(
                [sys.executable, __file__, '--child', m, str(f), str(w)], capture_output=True, text=True
            )
            if out.returncode:
                raise SystemExit(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[(layout, m, w)] = r
            print(layout, r, flush=True)
        f.unlink()
    lines = [
        '# Cross-match benchmark',
        '',
        f'Catalogue A {a.n1:,} rows (epoch 2000.0, 1% without proper motions), B {a.n2:,} rows (epoch 2015.5), '
        f'{a.common:,} stars in common, 2% fast movers (0.3–2.5″/yr), radius {RADIUS}″. '
        f'Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs; Python '
        f'{platform.python_version()}. '
        'Time: best of 2 runs in a fresh process; memory: peak RSS above the loaded data (includes C++ tree memory) '
        'and the tracemalloc peak (numpy/Python only). Speed-up is astropy match_to_catalog_sky time / method time. '
        f'Load average (1 min) at start {load0:.1f}, at end {os.getloadavg()[0]:.1f}: other jobs ran at the same time, '
        'so compare ratios within this run, not absolute times.',
        '',
    ]
    for layout in ['uniform', 'clustered']:
        ref = res[(layout, 'astropy_match_to_catalog_sky', 1)]
        lines += [
            f'## {layout}',
            '',
            '| method | threads | seconds | speed-up vs astropy | peak RSS (MB) | tracemalloc (MB) | '
            'pairs | true | false | completeness |',
            '|---|---|---|---|---|---|---|---|---|---|',
        ]
        for m, w in methods:
            r = res[(layout, m, w)]
            lines.append(
                f"| {m} | {w} | {r['seconds']:.2f} | {ref['seconds'] / r['seconds']:.2f} | {r['rss_mb']:.0f} | "
                f"{r['tracemalloc_mb']:.0f} | {r['pairs']:,} | {r['true_pairs']:,} | {r['false_pairs']:,} | "
                f"{r['true_pairs'] / r['n_true']:.5f} |"
            )
        lines.append('')
    lines += [
        '`ours` = epoch correction with each side\'s proper motions + all candidates + one-to-many resolution '
        '(`merge_catalogue`); `ours_table` also builds the output table (positions at 2016.0, pairwise separations). '
        'astropy/scipy rows: `pairs` counts every returned pair (search_around_sky is not one-to-one).',
        '',
    ]
    Path(a.out).write_text('\n'.join(lines))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
