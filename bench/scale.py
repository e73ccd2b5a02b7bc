"""The scaling table of the seed-scale run (issue #15): `scale_run.run_scale`, the function `stellar-spectra scale`
calls, at several sizes, with the seconds of each stage, the rates, the workers, the disk at its fullest and the store's
bytes per spectrum; and, at one size, the stage-by-stage pipeline on the same sky (`generate_mock_sky`,
`crossmatch_surveys`, one `run_preprocess`, `merge_shards`: what `make run`'s stages call) for the time and disk the
parts cost or save.

Usage: python bench/scale.py [--sizes 250 1000 3000] [--workers 2] [--preset cpu] [--full 3000] [--compare 1000]
       (writes bench/results/scale.md and scale.json; --full: the size also trained and evaluated with the preset)
"""

import argparse, json, os, platform, shutil, tempfile, time
from pathlib import Path
from stellar_spectra.mock.scale_run import run_scale, scale_config, disk_bytes
from stellar_spectra.mock.mocksky import generate_mock_sky
from stellar_spectra.pipeline.crossmatch import crossmatch_surveys
from stellar_spectra.pipeline.preprocess import run_preprocess
from stellar_spectra.pipeline.storage import merge_shards

ROOT = Path(__file__).resolve().parents[1]


def scale_row(n, workers, preset, until, params):
    "One run of `run_scale` in a fresh folder: its summary."
    d = Path(tempfile.mkdtemp(prefix=f'bench_scale_{n}_'))
    try:
        return run_scale(d / 'run', params, preset, n_stars=n, n_workers=workers, until=until, progress=False)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def stage_by_stage(n, workers, params, preset):
    "The same sky through the pipeline's stage functions, whole sky on disk: seconds per stage and disk at the end."
    cfg = scale_config(params, preset, n_stars=n, n_workers=workers)
    d = Path(tempfile.mkdtemp(prefix=f'bench_stages_{n}_'))
    t = {}
    try:
        t0 = time.perf_counter()
        generate_mock_sky(
            d / 'sky',
            n_stars=n,
            seed=cfg.seed,
            n_workers=workers,
            crowded_fraction=cfg.crowded_fraction,
            fast_fraction=cfg.fast_fraction,
            overlap=cfg.overlap,
            progress=False,
        )
        t['mock sky'] = time.perf_counter() - t0
        t0 = time.perf_counter()
        crossmatch_surveys(d / 'sky', out=d / 'xm.parquet', progress=False)
        t['crossmatch'] = time.perf_counter() - t0
        t0 = time.perf_counter()
        s = run_preprocess(
            d / 'sky', d / 'xm.parquet', d / 'pre', cfg.chunk_size, n_workers=workers, method=cfg.method, progress=False
        )
        t['preprocess'] = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = merge_shards(d / 'pre' / 'shards', d / 'store', progress=False)
        t['store'] = time.perf_counter() - t0
        return dict(
            n_stars=n, n_spectra=s['n_spectra'], stage_s=t, disk_bytes=disk_bytes(d), store_spectra=m['n_spectra']
        )
    finally:
        shutil.rmtree(d, ignore_errors=True)


def fmt_row(r):
    st = r['stage_s']
    parts = st.get('parts', 0)
    cols = [
        r['n_stars'],
        r['n_spectra'],
        r['n_parts'],
        r['n_workers'],
        st.get('sky', 0) + st.get('crossmatch', 0),
        parts,
        st.get('truth', 0) + st.get('store', 0),
        st.get('train', '—'),
        st.get('evaluate', '—'),
        f"{r['mocksky_stars_per_s']:.1f}",
        f"{r['preprocess_spectra_per_s']:.1f}",
        f"{r['n_spectra'] / sum(st.values()):.1f}",
        f"{r['disk_peak_bytes'] / 1e9:.2f}",
        f"{r['store_bytes_per_spectrum'] / 1e3:.1f}",
    ]
    return '| ' + ' | '.join(f'{c:.1f}' if isinstance(c, float) else str(c) for c in cols) + ' |'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--sizes', type=int, nargs='+', default=[250, 1000, 3000])
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument(
        '--preset',
        default='cpu',
        help="preset under params.yaml's scale: presets: (None: the seed-scale section itself)",
    )
    ap.add_argument('--full', type=int, default=None, help='this size also trained and evaluated')
    ap.add_argument(
        '--compare', type=int, default=1000, help='this size also through the stage-by-stage pipeline (0: none)'
    )
    ap.add_argument('--params', default=str(ROOT / 'params.yaml'))
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'scale.md'))
    a = ap.parse_args()
    preset = None if a.preset in ('None', 'none', '') else a.preset
    rows = []
    for n in a.sizes:
        r = scale_row(n, a.workers, preset, 'evaluate' if n == a.full else 'store', a.params)
        rows.append(r)
        print(json.dumps({k: v for k, v in r.items() if k not in ('train', 'evaluate')}), flush=True)
    ref = stage_by_stage(a.compare, a.workers, a.params, preset) if a.compare else None
    if ref:
        print(json.dumps(ref), flush=True)
    load = os.getloadavg()
    lines = [
        f'# Scaling table of the seed-scale run (`bench/scale.py`)',
        '',
        f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} cores, Python {platform.python_version()}; load average after the runs {load[0]:.2f}; '
        f'preset `{preset}` of params.yaml, {a.workers} workers.',
        '',
        '| stars | spectra | parts | workers | sky + cross-match (s) | parts: mock sky + preprocess (s) | truth + '
        'store (s) '
        '| train (s) | evaluate (s) | mock sky (stars/s) | preprocess (spectra/s) | end to end, stages run (spectra/s) '
        '| disk peak (GB) '
        '| store (KB/spectrum) |',
        '|' + '---|' * 14,
    ]
    lines += [fmt_row(r) for r in rows]
    if ref:
        same = next((r for r in rows if r['n_stars'] == ref['n_stars']), None)
        lines += [
            '',
            f"Stage by stage on the same {ref['n_stars']} stars (the whole sky on disk, then cross-match, one "
            "preprocess "
            f"run, store): "
            + ', '.join(f'{k} {v:.1f} s' for k, v in ref['stage_s'].items())
            + f"; total {sum(ref['stage_s'].values()):.1f} s, disk at the end {ref['disk_bytes'] / 1e9:.2f} GB, "
            f"{ref['store_spectra']} spectra stored.",
        ]
        if same:
            lines += [
                "The scale run on them: "
                f"{sum(v for k, v in same['stage_s'].items() if k not in ('train', 'evaluate')):.1f} s "
                f"to the store, disk at its fullest {same['disk_peak_bytes'] / 1e9:.2f} GB "
                f"({same['disk_peak_bytes'] / ref['disk_bytes']:.2f}× the stage-by-stage run's), "
                f"{same['store_spectra']} spectra stored."
            ]
    full = next((r for r in rows if 'evaluate' in r), None)
    if full:
        train_facts = {k: full['train'].get(k) for k in ('spectra', 'stars', 'steps', 'best_val', 'spectra_per_s')}
        lines += [
            '',
            f"Trained and evaluated at {full['n_stars']} stars: train {json.dumps(train_facts, default=str)}.",
        ]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text('\n'.join(lines) + '\n')
    Path(a.out).with_suffix('.json').write_text(json.dumps(dict(rows=rows, stage_by_stage=ref), indent=1, default=str))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
