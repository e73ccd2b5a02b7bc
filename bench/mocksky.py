"""Benchmark of the mock sky: stars per second written at a few sizes, serial and with 2 workers, and the time to draw
the 650,000-star population with its catalogues (what the cross-match benchmark needs).

Usage: python bench/mocksky.py [--sizes 10 30 100] [--workers 1 2]   (writes bench/results/mocksky.md)
"""
import argparse, platform, shutil, tempfile, time
from pathlib import Path
from stellar_spectra.population import draw_stars, make_catalogues
from stellar_spectra.mocksky import generate_mock_sky


def time_sky(n, workers, seed=0):
    d = Path(tempfile.mkdtemp(prefix='bench_mocksky_'))
    try:
        t0 = time.perf_counter(); s = generate_mock_sky(d, n_stars=n, seed=seed, n_workers=workers, progress=False)
        dt = time.perf_counter() - t0
        return dt, sum(s['bytes'].values()), sum(v for k, v in s['files'].items() if k != 'galah_tarballs')
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--sizes', type=int, nargs='+', default=[10, 30, 100])
    ap.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'mocksky.md'))
    a = ap.parse_args()
    rows = []
    for n in a.sizes:
        base = None
        for w in a.workers:
            dt, nbytes, nfiles = time_sky(n, w)
            base = base or dt
            rows.append((n, w, dt, n / dt, nfiles, nbytes / 1e6, base / dt))
            print(rows[-1], flush=True)
    t0 = time.perf_counter(); stars = draw_stars(650_000, seed=0, crowded_fraction=0.01); t1 = time.perf_counter()
    cats = make_catalogues(stars); t2 = time.perf_counter()
    lines = ['# Mock sky benchmark', '',
             f'Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}; '
             'the machine is shared with other jobs, so figures are indicative.', '',
             '| stars | workers | seconds | stars/s | spectrum files | MB written | speed-up vs 1 worker |', '|---|---|---|---|---|---|---|']
    lines += [f'| {n} | {w} | {dt:.1f} | {r:.2f} | {nf} | {mb:.1f} | {sp:.2f} |' for n, w, dt, r, nf, mb, sp in rows]
    lines += ['', f'draw_stars(650,000): {t1 - t0:.1f} s; make_catalogues: {t2 - t1:.1f} s '
              f"(APOGEE {len(cats['apogee']):,}, GALAH {len(cats['galah']):,}, Gaia-ESO {len(cats['ges']):,} rows).", '']
    Path(a.out).write_text('\n'.join(lines))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
