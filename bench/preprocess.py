"""Throughput of the preprocess stage: `preprocess.run_preprocess`, the function the dvc stage, the command line and the
notebook call (read -> flags -> rest-frame grid -> continuum -> weights -> alignment measurements -> shards, then the
guard and the summary), in spectra per second and per core, with 1 and 2 workers; where the worker time goes; and, with
`--baseline REV`, the same stage of the package at an earlier revision (exported with `git archive`, run in a
subprocess, back to back on the same input) and a check that both compute the same arrays.

Input: a mock sky of `--stars` stars generated once (kept in `--cache`) whose cross-match is replicated `--copies`
times: each copy is a distinct star key reading the same files. So that a copy cannot reuse an operator built for the
original (which real spectra never could for GALAH, whose wavelength solutions are per star), the catalogue velocity of
copy r is moved by r steps of the velocity lattice (0.31 km/s): every GALAH spectrum needs its own operators, as in a
real run. These shifts are not errors the guard should judge, so the guard runs (and is timed) with a tolerance of 1e9
pixels.

Workers: `n_workers=1` is the stage's serial path (in this process, no Dask); `n_workers=2` is the stage's own Dask
LocalCluster (its start-up and shutdown included). The scaling rows run the stage on a Dask cluster of 1 and of 2
workers started beforehand (`scheduler=`), so they compare Dask with Dask, start-up excluded.

Usage: .venv/bin/python bench/preprocess.py [--stars 300] [--copies 10] [--workers 1 2] [--baseline REV] [--check-copies
1] Writes bench/results/preprocess.md.
"""

import argparse, json, logging, os, platform, shutil, subprocess, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np, pandas as pd

ROOT = Path(__file__).resolve().parents[1]
GUARD = ('offset_px', 'err_px', 'segment_px')  # the guard's measurements (compared within a tolerance, not bit for bit)

# Runs one measurement with whatever `stellar_spectra` is importable (this checkout, or a `git archive` of a revision):
# argv: mode ('time' or 'check'), sky, cross-match, outdir, n_workers, scheduler ('' for none). Prints one JSON line.
_RUN = r'''
import hashlib, json, sys, time, warnings
import numpy as np, pandas as pd
import stellar_spectra, stellar_spectra.pipeline.preprocess as pp
warnings.simplefilter('ignore')
mode, sky, xm, out, w, sched = sys.argv[1:7]
digests = {}
GUARD = ['offset_px', 'err_px', 'segment_px']
if mode == 'check':  # what each chunk hands to the shard writer, whatever the store format of the revision
    _write = pp.write_shard

    def digest(v):
        return hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() + str(v.dtype) + str(v.shape)

    def write_shard(shard_dir, key, arrays, meta, native=None, grid=None, **kw):
        m = meta.reset_index(drop=True)
        rest = pd.util.hash_pandas_object(m.drop(columns=GUARD)).values.tobytes()
        digests[key] = {
            'arrays': {k: digest(v) for k, v in arrays.items()},
            'meta': hashlib.sha256(rest).hexdigest(),
            'guard': {c: m[c].astype(float).tolist() for c in GUARD},
        }
        return _write(shard_dir, key, arrays, meta, native, grid=grid, **kw)

    pp.write_shard = write_shard
# warm-up: one star of each survey, so that numba compiles (and caches) every kernel first
import os, tempfile
x = pd.read_parquet(xm)
d = tempfile.mkdtemp()
x = pd.concat([x[x[f'in_{s}'].astype(bool)].head(1) for s in ('apogee', 'galah', 'ges')])
x.to_parquet(os.path.join(d, 'xm.parquet'))
kw = dict(scheduler=sched or None, tol_px=1e9, progress=False)
pp.run_preprocess(sky, os.path.join(d, 'xm.parquet'), os.path.join(d, 'out'), n_workers=1, chunk_size=1, **kw)
from stellar_spectra.pipeline import resample as rs
if hasattr(rs, 'clear_resampler_cache'):
    rs.clear_resampler_cache()
else:  # a revision from before the cache moved to resample
    pp._OPS.clear()
    pp._SEEN.clear()
digests.clear()
t = time.perf_counter()
s = pp.run_preprocess(sky, xm, out, n_workers=int(w), **kw)
wall = time.perf_counter() - t
facts = {'wall': wall, 'n': s['n_spectra'], 'stars': s['n_stars'], 'errors': len(s['errors'])}
print(json.dumps({**facts, 'clock': s['timings']['worker_s'], 'digests': digests, 'package': stellar_spectra.__file__}))
'''


def sky(cache, n_stars):
    "The mock sky and its cross-match (generated once into `cache`)."
    from stellar_spectra.mock.mocksky import generate_mock_sky
    from stellar_spectra.pipeline.crossmatch import crossmatch_surveys

    root = Path(cache) / f'sky{n_stars}'
    if not (root / 'xm' / 'common_stars.parquet').is_file():
        t = time.perf_counter()
        generate_mock_sky(root, n_stars=n_stars, seed=2024, n_workers=2, progress=False)
        crossmatch_surveys(root, root / 'xm' / 'common_stars.parquet', progress=False)
        print(f'mock sky of {n_stars} stars: {time.perf_counter() - t:.0f} s')
    return root, root / 'xm' / 'common_stars.parquet'


def replicate(xm_path, copies, out):
    "The cross-match repeated `copies` times; copy r's velocities moved by r lattice steps."
    from stellar_spectra.pipeline import preprocess as pp
    from stellar_spectra.pipeline.resample import RV_LATTICE

    xm = pd.read_parquet(xm_path)
    step = pp.C_KMS * pp.common_grid().dln / RV_LATTICE
    big = pd.concat(
        [xm.assign(**{c: xm[c] + r * step for c in ('rv_apogee', 'rv_galah', 'rv_ges')}) for r in range(copies)],
        ignore_index=True,
    )
    big.to_parquet(out)
    return out


def export(rev, dest):
    "The package at git revision `rev`, extracted under `dest`."
    tar = subprocess.run(
        ['git', '-C', str(ROOT), 'archive', rev, 'stellar_spectra'], check=True, capture_output=True
    ).stdout
    subprocess.run(['tar', '-x', '-C', str(dest)], input=tar, check=True)
    return dest


def run(mode, root, xm, out, workers, scheduler='', package=None):
    "One stage run in a subprocess (this checkout's package, or the one under `package`): the JSON it prints."
    env = dict(os.environ, PYTHONPATH=str(package or ROOT))
    p = subprocess.run(
        [sys.executable, '-c', _RUN, mode, str(root), str(xm), str(out), str(workers), scheduler],
        env=env,
        cwd=str(package or ROOT),
        capture_output=True,
        text=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r['package'].startswith(str(package or ROOT)), r['package']
    return r


def cluster(n):
    "A Dask LocalCluster of `n` single-threaded workers, started as the stage starts its own (same glibc settings)."
    import dask
    from distributed import LocalCluster
    from stellar_spectra.pipeline.preprocess import WORKER_MALLOC

    env = {**dask.config.get('distributed.nanny.pre-spawn-environ', default={}), **WORKER_MALLOC}
    with dask.config.set({'distributed.nanny.pre-spawn-environ': env}):
        return LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        )


def profile(root, xm, n=60):
    """CPU ms per spectrum by survey of reading and of `preprocess_spectrum` (operator caches emptied first), in this
    process."""
    from stellar_spectra.pipeline import preprocess as pp
    from stellar_spectra.pipeline.resample import clear_resampler_cache
    from stellar_spectra.io.readers import read_spectrum

    plan = pp.work_plan(root, xm)
    g = pp.common_grid()
    out = {}
    pp.preprocess_spectrum(read_spectrum(root / plan.relpath[0]), g, plan.rv[0])  # compiled kernels loaded
    clear_resampler_cache()
    for s, sub in plan.groupby('survey'):
        sub = sub.head(n)
        t = time.process_time()
        specs = [read_spectrum(root / r) for r in sub.relpath]
        t1 = time.process_time()
        for sp, rv in zip(specs, sub.rv):
            pp.preprocess_spectrum(sp, g, rv)
        out[s] = ((t1 - t) / len(sub) * 1e3, (time.process_time() - t1) / len(sub) * 1e3, len(sub))
    return out


def compare(a, b):
    "(chunks, arrays identical, metadata identical, largest guard difference in pixels) of two 'check' runs."
    assert a['digests'].keys() == b['digests'].keys(), 'different chunks'
    arrays = all(a['digests'][k]['arrays'] == b['digests'][k]['arrays'] for k in a['digests'])
    meta = all(a['digests'][k]['meta'] == b['digests'][k]['meta'] for k in a['digests'])
    gd = 0.0
    for k in a['digests']:
        for c in GUARD:
            u, v = np.array(a['digests'][k]['guard'][c], float), np.array(b['digests'][k]['guard'][c], float)
            assert (np.isnan(u) == np.isnan(v)).all(), f'{k} {c}: measured in one run only'
            gd = max(gd, float(np.nanmax(np.abs(u - v), initial=0.0)))
    return len(a['digests']), arrays, meta, gd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--stars', type=int, default=300)
    ap.add_argument('--copies', type=int, default=10)
    ap.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    ap.add_argument(
        '--baseline', default=None, help='git revision to compare with (e.g. 38523e0, the commit before these changes)'
    )
    ap.add_argument(
        '--check-copies', type=int, default=1, help='copies of the cross-match for the array check against --baseline'
    )
    ap.add_argument(
        '--previous', default='34.3 / 52.8', help='the rates (1 / 2 workers) recorded before, quoted for reference'
    )
    ap.add_argument('--cache', default=str(Path(tempfile.gettempdir()) / 'stellar_spectra_bench'))
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'preprocess.md'))
    a = ap.parse_args()
    warnings.simplefilter('ignore')
    if a.baseline:
        a.baseline = subprocess.run(
            ['git', '-C', str(ROOT), 'rev-parse', '--short', a.baseline], check=True, capture_output=True, text=True
        ).stdout.strip()
    root, xm = sky(a.cache, a.stars)
    work = Path(tempfile.mkdtemp(prefix='pp_bench_'))
    big = replicate(xm, a.copies, work / 'common_stars.parquet')
    cores = os.cpu_count() or 1
    base = export(a.baseline, Path(tempfile.mkdtemp(prefix='pp_bench_rev_'))) if a.baseline else None
    load0 = os.getloadavg()
    rows = []  # (code, how, workers, result)
    for w in a.workers:
        rows.append(
            (
                'now',
                'serial (the stage with n_workers=1)'
                if w == 1
                else f'the stage\'s own LocalCluster (start-up included)',
                w,
                run('time', root, big, work / 'out', w),
            )
        )
        print(rows[-1][:3], rows[-1][3]['wall'], flush=True)
    for w in a.workers:  # Dask against Dask: clusters started beforehand
        c = cluster(w)
        try:
            rows.append(
                ('now', 'Dask cluster already running', w, run('time', root, big, work / 'out', 0, c.scheduler_address))
            )
        finally:
            c.close()
        print(rows[-1][:3], rows[-1][3]['wall'], flush=True)
    if base:
        for w in a.workers:
            rows.append(
                (
                    a.baseline,
                    'serial' if w == 1 else 'the stage\'s own LocalCluster',
                    w,
                    run('time', root, big, work / 'out', w, package=base),
                )
            )
            print(rows[-1][:3], rows[-1][3]['wall'], flush=True)
    load1 = os.getloadavg()
    check = None
    if base:
        small = replicate(xm, a.check_copies, work / 'check.parquet')
        check = compare(
            run('check', root, small, work / 'out', 1, package=base), run('check', root, small, work / 'out', 1)
        )
    prof = profile(root, xm)
    shutil.rmtree(work, ignore_errors=True)
    if base:
        shutil.rmtree(base, ignore_errors=True)

    fmt = lambda l: ' / '.join(f'{x:.2f}' for x in l)
    r0 = rows[0][3]
    n, stars = r0['n'], r0['stars']
    lines = [
        '# Preprocess stage throughput',
        '',
        f'Measured {time.strftime("%Y-%m-%d %H:%M")}. Machine: {cores}-core AMD EPYC ({platform.machine()}), no GPU, '
        'Python '
        f'{platform.python_version()}, shared with other jobs: load average (1 / 5 / 15 min) {fmt(load0)} before the '
        'runs and '
        f'{fmt(load1)} after them (the runs add about their number of workers). '
        f'Run: `.venv/bin/python bench/preprocess.py --stars {a.stars} --copies {a.copies}'
        + (f' --baseline {a.baseline}' if a.baseline else '')
        + '`.',
        '',
        f'Input: a mock sky of {a.stars} stars generated once, its cross-match replicated {a.copies} times ({stars} '
        'star keys, '
        f'{n} spectra; copy r reads the same files with its catalogue velocities moved by r lattice steps, so that no '
        'GALAH '
        'operator is reused across copies, as in real data; guard tolerance 1e9 px for that reason). End to end: plan, '
        'read, '
        'flag, rest-frame grid, continuum, weights, alignment measurements, shards written (chunks of 64), guard and '
        'summary; '
        'each run in a fresh process.',
        '',
        '| code | how | workers | spectra | wall (s) | spectra/s | spectra/s per core | worker ms per spectrum: read / '
        'process / guard / write |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for code, how, w, r in rows:
        c = {k: v / r['n'] * 1e3 for k, v in r['clock'].items()}
        lines.append(
            f"| {code} | {how} | {w} | {r['n']} | {r['wall']:.1f} | {r['n'] / r['wall']:.1f} | "
            f"{r['n'] / r['wall'] / min(w, cores):.1f} | "
            f"{c['read']:.1f} / {c['process']:.1f} / {c['guard']:.1f} / {c['write']:.1f} |"
        )
    rate = {(code, how.startswith('Dask'), w): r['n'] / r['wall'] for code, how, w, r in rows}
    lines += [
        '',
        f'Recorded before these changes (same script, same input, quieter machine): {a.previous} spectra/s with 1 / 2 '
        'workers.',
    ]
    if ('now', True, 1) in rate and ('now', True, 2) in rate:
        lines.append(
            "Scaling on Dask, 1 -> 2 workers (clusters started beforehand): "
            f"{rate[('now', True, 2)] / rate[('now', True, 1)]:.2f}x."
        )
    if base:
        sp = [
            f"{rate[('now', False, w)] / rate[(a.baseline, False, w)]:.2f}x with {w} worker(s)"
            for w in a.workers
            if (a.baseline, False, w) in rate
        ]
        lines.append(f"Speed-up over `{a.baseline}`, run back to back: {', '.join(sp)}.")
    if check:
        k, same_a, same_m, gd = check
        lines += [
            '',
            f'Same output as `{a.baseline}` ({a.check_copies} cop{"y" if a.check_copies == 1 else "ies"}, {k} chunks, '
            'serial): '
            f'arrays handed to the shard writer {"identical, bit for bit" if same_a else "DIFFERENT"}; metadata other '
            'than the guard\'s '
            f'offsets {"identical" if same_m else "DIFFERENT"}; the guard\'s offsets within {gd:.1e} px (the order of '
            'its sums).',
        ]
    lines += [
        '',
        '## Per-spectrum profile (one process, operator caches emptied, first 60 spectra of each survey)',
        '',
        '| survey | read (ms CPU) | preprocess_spectrum (ms CPU) | spectra |',
        '|---|---|---|---|',
    ]
    for s, (r, p, m) in prof.items():
        lines.append(f'| {s} | {r:.1f} | {p:.1f} | {m} |')
    Path(a.out).write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
