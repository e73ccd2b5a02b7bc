"""Benchmark of the mock sky: stars per second (and per core) that `generate_mock_sky`, the function the pipeline stage
calls, writes at a few sizes, serial and with 2 workers; the same for an earlier revision of the package (`--baseline`,
run from `git archive` in a subprocess, so the speed-up is measured in one run on one machine); and the time to draw
the 650,000-star population with its catalogues (what the cross-match benchmark needs).

Usage: python bench/mocksky.py [--sizes 30 100 300] [--workers 1 2] [--baseline REV] [--baseline-sizes 100]
       (writes bench/results/mocksky.md)
"""

import argparse, json, os, platform, shutil, subprocess, sys, tempfile, time
from pathlib import Path
from stellar_spectra.mock.population import draw_stars, make_catalogues
from stellar_spectra.mock.mocksky import generate_mock_sky

ROOT = Path(__file__).resolve().parents[1]
_TIME = """import json, sys, time, tempfile, shutil
import stellar_spectra
from stellar_spectra.mock.mocksky import generate_mock_sky
assert stellar_spectra.__file__.startswith(sys.argv[4]), stellar_spectra.__file__
n, w, seed = map(int, sys.argv[1:4])
d = tempfile.mkdtemp(prefix='bench_mocksky_')
generate_mock_sky(tempfile.mkdtemp(prefix='bench_mocksky_warm_'), n_stars=2, seed=1, progress=False)  # caches, imports
try:
    t0 = time.perf_counter()
    s = generate_mock_sky(d, n_stars=n, seed=seed, n_workers=w, progress=False)
    dt = time.perf_counter() - t0
    print(json.dumps([dt, sum(s['bytes'].values()), sum(v for k, v in s['files'].items() if k != 'galah_tarballs')]))
finally:
    shutil.rmtree(d, ignore_errors=True)
"""


def time_sky(n, workers, seed=0, repeat=1):
    "Best of `repeat` runs of `generate_mock_sky` in this process: (seconds, bytes written, spectrum files)."
    best = None
    for _ in range(repeat):
        d = Path(tempfile.mkdtemp(prefix='bench_mocksky_'))
        try:
            t0 = time.perf_counter()
            s = generate_mock_sky(d, n_stars=n, seed=seed, n_workers=workers, progress=False)
            dt = time.perf_counter() - t0
        finally:
            shutil.rmtree(d, ignore_errors=True)
        run = (dt, sum(s['bytes'].values()), sum(v for k, v in s['files'].items() if k != 'galah_tarballs'))
        best = run if best is None or run[0] < best[0] else best
    return best


def time_revision(rev, n, seed=0, repeat=1):
    "The same timing for the package at git revision `rev` (exported with `git archive`, run in a subprocess)."
    d = Path(tempfile.mkdtemp(prefix='bench_mocksky_rev_'))
    try:
        tar = subprocess.run(
            ['git', '-C', str(ROOT), 'archive', rev, 'stellar_spectra'], check=True, capture_output=True
        ).stdout
        subprocess.run(['tar', '-x', '-C', str(d)], input=tar, check=True)
        env = dict(os.environ, PYTHONPATH=str(d))
        runs = [
            json.loads(
                subprocess.run(
                    [sys.executable, '-c', _TIME, str(n), '1', str(seed), str(d)],
                    env=env,
                    cwd=d,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            for _ in range(repeat)
        ]  # cwd: not this checkout's package
        return min(runs)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--sizes', type=int, nargs='+', default=[30, 100, 300])
    ap.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    ap.add_argument('--repeat', type=int, default=2, help='best of this many runs per size (the machine is shared)')
    ap.add_argument('--baseline', default=None, help='git revision to compare with (e.g. the commit before issue #15)')
    ap.add_argument('--baseline-sizes', type=int, nargs='+', default=[100])
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'mocksky.md'))
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    generate_mock_sky(
        tempfile.mkdtemp(prefix='bench_mocksky_warm_'), n_stars=2, seed=1, progress=False
    )  # caches, imports
    rows = []
    for n in a.sizes:
        base = None
        for w in a.workers:
            dt, nbytes, nfiles = time_sky(n, w, repeat=a.repeat)
            base = base or dt
            rows.append((n, w, dt, n / dt, n / dt / min(w, cores), nfiles, nbytes / 1e6, base / dt))
            print(rows[-1], flush=True)
    old = []
    if a.baseline:
        for n in a.baseline_sizes:
            dt_old = time_revision(a.baseline, n, repeat=a.repeat)[0]
            dt_new = time_sky(n, 1, repeat=a.repeat)[0]
            old.append((n, dt_old, n / dt_old, dt_new, n / dt_new, dt_old / dt_new))
            print(old[-1], flush=True)
    t0 = time.perf_counter()
    stars = draw_stars(650_000, seed=0, crowded_fraction=0.01)
    t1 = time.perf_counter()
    cats = make_catalogues(stars)
    t2 = time.perf_counter()
    lines = [
        '# Mock sky benchmark',
        '',
        f'Machine: {platform.processor() or platform.machine()}, {cores} cores, Python {platform.python_version()}; '
        f'best of {a.repeat} runs; the machine is shared with other jobs, so figures are indicative.',
        '',
        '| stars | workers | seconds | stars/s | stars/s per core | spectrum files | MB written | speed-up vs 1 worker '
        '|',
        '|---|---|---|---|---|---|---|---|',
    ]
    lines += [
        f'| {n} | {w} | {dt:.2f} | {r:.1f} | {rc:.1f} | {nf} | {mb:.1f} | {sp:.2f} |'
        for n, w, dt, r, rc, nf, mb, sp in rows
    ]
    if old:
        lines += [
            '',
            f'Against revision `{a.baseline}` (one worker, same seed, same machine, one after the other):',
            '',
            '| stars | seconds then | stars/s then | seconds now | stars/s now | speed-up |',
            '|---|---|---|---|---|---|',
        ]
        lines += [f'| {n} | {do:.2f} | {ro:.1f} | {dn:.2f} | {rn:.1f} | {sp:.1f}× |' for n, do, ro, dn, rn, sp in old]
    lines += [
        '',
        f'draw_stars(650,000): {t1 - t0:.1f} s; make_catalogues: {t2 - t1:.1f} s '
        f"(APOGEE {len(cats['apogee']):,}, GALAH {len(cats['galah']):,}, Gaia-ESO {len(cats['ges']):,} rows).",
        '',
    ]
    Path(a.out).write_text('\n'.join(lines))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
