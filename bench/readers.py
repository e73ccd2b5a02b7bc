"""Benchmark of the survey readers against a plain astropy `fits.getdata` loop (reading the same arrays, headers and
table columns) and `specutils.Spectrum.read` where specutils has a loader, on the same mock-sky files: files per second,
peak memory of one read, and open file descriptors / resident memory over many reads (cycling over the files).

Usage: python bench/readers.py [--sky DIR] [--n-stars 12] [--reads 1000] [--reads-slow 200] [--many 10000] [--quick]
(writes bench/results/readers.md). Single thread unless stated.
"""

import os

for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_v, '1')
import argparse, platform, tempfile, time, tracemalloc, warnings
from datetime import datetime, timezone
from pathlib import Path
import numpy as np
import pandas as pd
from astropy.io import fits
from stellar_spectra.io.readers import read_spectrum, read_many

PRODUCTS = {'apStar': 'APOGEE apStar', 'apVisit': 'APOGEE apVisit', 'galah': 'GALAH camera', 'uves': 'Gaia-ESO UVES'}
SPECUTILS_FORMAT = {
    'apStar': 'APOGEE apStar',
    'apVisit': 'APOGEE apVisit',
    'galah': 'wcs1d-fits',
    'uves': 'tabular-fits',
}


def astropy_loop(product):
    "The plain astropy loop a user would write for the same content: header + the arrays (and table columns) we use."

    def apstar(p):
        return fits.getheader(p, 0), fits.getdata(p, 1), fits.getdata(p, 2), fits.getdata(p, 3)

    def apvisit(p):
        t = fits.getdata(p, 11)
        return (fits.getheader(p, 0), *[fits.getdata(p, e) for e in (1, 2, 3, 4)], t['VHELIO'][0], t['BC'][0])

    def galah(p):
        f, h = fits.getdata(p, 0, header=True)
        return h, f, fits.getdata(p, 1)

    def uves(p):
        t = fits.getdata(p, 1)
        return fits.getheader(p, 0), *[t[c][0] for c in ('WAVE', 'FLUX_REDUCED', 'ERR_REDUCED', 'QUAL') if c in t.names]

    return {'apStar': apstar, 'apVisit': apvisit, 'galah': galah, 'uves': uves}[product]


def ours(p):
    return read_spectrum(p, stitch=False)


def specutils_reader(product):
    "specutils' loader for the product, or None if it has none that reads our files."
    from specutils import Spectrum

    fmt = SPECUTILS_FORMAT[product]
    return lambda p: Spectrum.read(p, format=fmt)


def rate(fn, files, n):
    "(files/s wall, files/s CPU) over `n` reads cycling over `files`, after one warm-up read."
    fn(files[0])
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(files[i % len(files)])
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def nbytes(x):
    "Bytes of the numpy arrays held by a read's result (Spectrum, specutils Spectrum or tuple of arrays/headers)."
    if isinstance(x, np.ndarray):
        return x.nbytes
    if isinstance(x, (tuple, list)):
        return sum(nbytes(v) for v in x)
    if hasattr(x, 'wave'):
        return sum(getattr(x, a).nbytes for a in ('wave', 'flux', 'ivar', 'flags')) + (
            0 if x.survey_flags is None else x.survey_flags.nbytes
        )
    if hasattr(x, 'spectral_axis'):
        return (
            x.flux.nbytes
            + x.spectral_axis.nbytes
            + (0 if x.uncertainty is None else x.uncertainty.array.nbytes)
            + (0 if x.mask is None else np.asarray(x.mask).nbytes)
        )
    return 0


def peak_memory(fn, files):
    "(largest returned arrays MB, largest tracemalloc peak of one read MB) over the files."
    held, peak = 0, 0
    for p in files:
        tracemalloc.start()
        r = fn(p)
        _, pk = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        held, peak = max(held, nbytes(r)), max(peak, pk)
    return held / 1e6, peak / 1e6


def n_fds():
    return len(os.listdir('/proc/self/fd'))


def rss_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1e3


def many_reads(fn, files, n, keep=False):
    """Open descriptors (before, max, after) and RSS (MB before, after) over `n` reads cycling over `files` (results
    kept or dropped)."""
    fn(files[0])
    f0, r0, fmax, kept = n_fds(), rss_mb(), 0, []
    for i in range(n):
        r = fn(files[i % len(files)])
        if keep:
            kept.append(r)
        if i % 50 == 0:
            fmax = max(fmax, n_fds())
    out = f0, max(fmax, n_fds()), n_fds(), r0, rss_mb()
    del kept
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--sky', default=None, help='existing mock sky (default: generate one in a temporary directory)')
    ap.add_argument('--n-stars', type=int, default=12)
    ap.add_argument('--seed', type=int, default=3)
    ap.add_argument('--reads', type=int, default=1000, help='reads per product for ours and astropy')
    ap.add_argument('--reads-slow', type=int, default=200, help='reads per product for specutils')
    ap.add_argument('--many', type=int, default=10000, help='reads for the descriptor / memory check')
    ap.add_argument('--quick', action='store_true', help='reduced counts (200 / 50 / 1000)')
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'readers.md'))
    a = ap.parse_args()
    if a.quick:
        a.reads, a.reads_slow, a.many = 200, 50, 1000
    warnings.simplefilter('ignore')
    sky = Path(a.sky) if a.sky else Path(tempfile.mkdtemp(prefix='bench_readers_'))
    if not (sky / 'truth' / 'observations.parquet').exists():
        from stellar_spectra.mock.mocksky import generate_mock_sky

        generate_mock_sky(sky, n_stars=a.n_stars, seed=a.seed, progress=False)
    obs = pd.read_parquet(sky / 'truth' / 'observations.parquet')
    obs['kind'] = np.where(obs.survey == 'galah', 'galah', obs['product'])
    files = {k: [sky / r for r in obs.relpath[obs.kind == k].unique()] for k in PRODUCTS}
    load = os.getloadavg()[0]
    rows, mem = [], []
    for k, fl in files.items():
        size = np.mean([p.stat().st_size for p in fl]) / 1e6
        res = {'ours': rate(ours, fl, a.reads), 'astropy': rate(astropy_loop(k), fl, a.reads)}
        mem.append((k, 'stellar_spectra', *peak_memory(ours, fl)))
        mem.append((k, 'astropy getdata loop', *peak_memory(astropy_loop(k), fl)))
        try:
            su = specutils_reader(k)
            su(fl[0])
            res['specutils'] = rate(su, fl, a.reads_slow)
            mem.append((k, 'specutils', *peak_memory(su, fl)))
        except Exception as e:
            res['specutils'] = f'no loader ({type(e).__name__})'
        rows.append((k, len(fl), size, res))
        print(k, res, flush=True)
    allf = [p for fl in files.values() for p in fl]
    many = many_reads(ours, allf, a.many)
    nk = min(a.many, 300)
    kept = many_reads(ours, allf, nk, keep=True)
    naive = many_reads(
        lambda p: fits.open(p)[1].data, allf, nk, keep=True
    )  # astropy's default: memory map, file left open
    batch = allf * max(1, 400 // len(allf))
    n_par = len(batch)
    par = {}
    for label, kw in [
        ('1 worker', dict(n_workers=1)),
        ('2 threads', dict(n_workers=2)),
        ('2 processes', dict(n_workers=2, processes=True)),
    ]:
        t0 = time.perf_counter()
        read_many(batch, progress=False, stitch=False, **kw)
        par[label] = n_par / (time.perf_counter() - t0)

    L = [
        f'# Readers benchmark',
        '',
        f'{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs ({platform.machine()}), load average '
        f'at the start {load:.2f} '
        '(the machine is shared: absolute figures are indicative, ratios come from one run); Python '
        f'{platform.python_version()}; single thread.',
        '',
        f'Mock sky of {a.n_stars} stars (seed {a.seed}): the same files for every reader, read cycling. Ours: '
        '`read_spectrum(path, stitch=False)` '
        '(a full `Spectrum`: vacuum wavelengths, ivar, common + survey flags, identifiers, velocities; GALAH one '
        'camera, air→vacuum). '
        'astropy: the `fits.getdata`/`getheader` loop reading the same header, arrays and table columns (no '
        'wavelengths, no masks, no '
        f'checks). specutils: `Spectrum.read(path, format=...)` where a loader exists. {a.reads} reads per product for '
        'ours and astropy, '
        f'{a.reads_slow} for specutils.',
        '',
        '| product | files | MB/file | ours files/s | astropy loop files/s | specutils files/s | ours ÷ astropy | ours '
        '÷ specutils |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for k, n, size, r in rows:
        su = r['specutils']
        sus = f'{su[0]:,.0f}' if isinstance(su, tuple) else su
        ratio_su = f'{r["ours"][0] / su[0]:.2f}' if isinstance(su, tuple) else '–'
        L.append(
            f'| {PRODUCTS[k]} | {n} | {size:.2f} | {r["ours"][0]:,.0f} | {r["astropy"][0]:,.0f} | {sus} | '
            f'{r["ours"][0] / r["astropy"][0]:.2f} | {ratio_su} |'
        )
    L += [
        '',
        'Files per second are wall-clock; CPU-time rates (this process only) were '
        + ', '.join(f'{PRODUCTS[k]} ours {r["ours"][1]:,.0f} / astropy {r["astropy"][1]:,.0f}' for k, _, _, r in rows)
        + '.',
        '',
        '## Memory of one read (largest over the files)',
        '',
        '| product | reader | returned arrays (MB) | tracemalloc peak (MB) | peak − returned (MB) |',
        '|---|---|---|---|---|',
    ]
    for k, who, held, peak in mem:
        L.append(
            f'| {PRODUCTS[k]} | {who} | {held:.2f} | {peak:.2f} | '
            + (f'{peak - held:.2f} |' if peak >= held else 'arrays memory-mapped (not traced) |')
        )
    L += [
        '',
        'Peak − returned is what a read needs beyond what it hands back (for apStar: the other rows of the file, read '
        'and dropped).',
    ]
    f0, fmax, f1, r0, r1 = many
    L += [
        '',
        f'## {a.many:,} reads, cycling over all {len(allf)} files (results dropped)',
        '',
        f'- stellar_spectra: open descriptors {f0} before, at most {fmax} during, {f1} after; resident memory {r0:.0f} '
        f'MB before, {r1:.0f} MB after.',
        f'- Keeping the results of {nk} reads: stellar_spectra descriptors {kept[0]} before, at most {kept[1]}, '
        f'{kept[2]} after. For contrast, '
        f'`fits.open(path)[1].data` (astropy\'s default memory map, file left to the garbage collector) with the {nk} '
        'arrays kept: descriptors '
        f'{naive[0]} before, {naive[2]} after.',
        f'- `read_many` over {n_par} files (GALAH cameras unstitched): '
        + ', '.join(f'{v:,.0f} files/s with {k}' for k, v in par.items())
        + f' (the machine has {os.cpu_count()} shared cores).',
        '',
    ]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out).with_suffix('.md.tmp')
    tmp.write_text('\n'.join(L))
    os.replace(tmp, a.out)
    print('\n'.join(L))


if __name__ == '__main__':
    main()
