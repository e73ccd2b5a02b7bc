"""Regridded HDF5 store. With --compact: the store's compact rows (`precision='noise'`) against the previous format
(whole-grid arrays in one-row chunks) on the mock sky's pipeline output, in one run: bytes per spectrum, random batches,
whole-sample loads (whole grid and pack_store's observed pixels) against reading the file's bytes,
`training.pack_store`, and the chi2 check. Without it: the grid layout's chunk shapes and filters against contiguous,
h5py's default (auto-chunked, gzip) and one-chunk-per-spectrum layouts; with --checksums, what checksumming the chunks
(fletcher32) or the arrays (sha256) costs. Each writes a dated section of the results.

Usage: .venv/bin/python bench/storage.py --compact [--store data/store/regridded.h5 | --stars 200] [--tile 4]
       .venv/bin/python bench/storage.py [--n 2000] [--out bench/results/storage.md] [--checksums]
"""

import argparse, hashlib, os, platform, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np
import pandas as pd
import pyarrow as pa
import h5py
from stellar_spectra.atomic import atomic_write
from stellar_spectra.pipeline.resample import common_grid
from stellar_spectra.pipeline.regridded import RegriddedStore, write_regridded, open_regridded
from stellar_spectra.pipeline.h5chunks import (
    chunk_layout,
    write_rows,
    read_rows,
    direct_ok,
    chunk_table,
    read_runs,
    CHUNK_ROWS,
    CHUNK_PX,
    COMPRESSION,
)

FIELDS = ('norm_flux', 'norm_ivar', 'weight')  # what training reads
COVER = {
    'apogee': [(15140, 15800), (15860, 16430), (16480, 16960)],  # rest-frame vacuum Å, chip gaps left out
    'galah': [(4713, 4903), (5648, 5873), (6478, 6737), (7585, 7887)],
    'ges': [(4760, 5770), (5830, 6840)],
}

_COVER = {}


def block(grid, r0, r1):
    "Realistic rows r0..r1: each survey's coverage (noise in float32), zeros elsewhere, as the masks stage leaves them."
    if not _COVER:
        _COVER.update(
            {s: np.any([(grid.wave >= a) & (grid.wave <= b) for a, b in c], axis=0) for s, c in COVER.items()}
        )
    rng = np.random.default_rng(r0)
    n = r1 - r0
    out = {k: np.zeros((n, grid.n), np.float32) for k in FIELDS}
    for i in range(n):
        c = _COVER[('apogee', 'galah', 'ges')[(r0 + i) % 3]]
        m = int(c.sum())
        good = rng.random(m) > 0.03  # a few % masked
        out['norm_flux'][i, c] = rng.normal(1, 0.02, m)
        out['norm_ivar'][i, c] = np.where(good, rng.uniform(500, 5000, m), 0)
        out['weight'][i, c] = np.where(good, np.where(rng.random(m) < 0.05, 0.5, 1.0), 0)
    return out


def layouts(n_rows, n_px):
    "name -> (create_dataset kwargs, skip empty chunks)."
    sh, f4 = (n_rows, n_px), np.float32
    return {
        'contiguous (h5py default, no compression)': (dict(shape=sh, dtype=f4), False),
        "h5py default with gzip (auto-chunked, compression='gzip')": (
            dict(shape=sh, dtype=f4, compression='gzip'),
            False,
        ),
        'one chunk per spectrum (1, n), no compression': (dict(shape=sh, dtype=f4, chunks=(1, n_px)), False),
        'one chunk per spectrum (1, n), lzf': (dict(shape=sh, dtype=f4, chunks=(1, n_px), compression='lzf'), False),
        f'chosen: ({CHUNK_ROWS}, {CHUNK_PX}) {COMPRESSION or "no compression"}, empty chunks unwritten': (
            chunk_layout(sh, f4),
            True,
        ),
        '(1, 2048) lzf, empty chunks unwritten': (chunk_layout(sh, f4, compression='lzf'), True),
        '(1, 2048) gzip-1 + shuffle, empty chunks unwritten': (chunk_layout(sh, f4, compression='gzip'), True),
        '(1, 1024) no compression, empty chunks unwritten': (
            chunk_layout(sh, f4, chunk_px=1024, compression=None),
            True,
        ),
        '(1, 4096) no compression, empty chunks unwritten': (
            chunk_layout(sh, f4, chunk_px=4096, compression=None),
            True,
        ),
        '(16, 2048) lzf, empty chunks unwritten': (chunk_layout(sh, f4, chunk_rows=16, compression='lzf'), True),
    }


_TABLES = {}


def ours(ds, rows):
    """The store's reader: the direct path (chunk offsets + os.preadv) where the layout allows it, else sorted runs
    through h5py."""
    if not direct_ok(ds):
        return read_rows(ds, rows)
    key = (ds.file.filename, ds.name)
    if key not in _TABLES:
        _TABLES[key] = (os.open(ds.file.filename, os.O_RDONLY), chunk_table(ds))
    fd, tab = _TABLES[key]
    return read_runs(fd, tab, rows, np.zeros((len(rows), ds.shape[1]), ds.dtype))


def forget():
    for fd, _ in _TABLES.values():
        os.close(fd)
    _TABLES.clear()


def drop_cache(path):
    "Evict the file from the page cache (posix_fadvise DONTNEED; the host may still cache it)."
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write(path, grid, n, kw, skip, bs=256):
    t = time.perf_counter()
    with h5py.File(path, 'w', libver='latest') as f:
        dss = {k: f.create_dataset(k, **kw) for k in FIELDS}
        for r0 in range(0, n, bs):
            b = block(grid, r0, min(n, r0 + bs))
            for k in FIELDS:
                if skip:
                    write_rows(dss[k], r0, b[k])
                else:
                    dss[k][r0 : r0 + len(b[k])] = b[k]
    return time.perf_counter() - t


def h5py_fancy(ds, rows):
    "What a user would write: h5py fancy indexing needs increasing rows, so sort and reorder."
    o = np.argsort(rows)
    out = np.empty((len(rows), ds.shape[1]), ds.dtype)
    out[o] = ds[np.sort(rows)]
    return out


def time_batches(path, batches, reader, min_s=1.5, cold=True):
    "Spectra per second reading random batches (all FIELDS) until min_s has passed (at least 2 batches)."
    if cold:
        drop_cache(path)
    n_read, t0, c0 = 0, time.perf_counter(), time.process_time()
    with h5py.File(path, 'r') as f:
        for i, rows in enumerate(batches):
            for k in FIELDS:
                reader(f[k], rows)
            n_read += len(rows)
            if i >= 1 and time.perf_counter() - t0 > min_s:
                break
    return n_read / (time.perf_counter() - t0), n_read / (time.process_time() - c0)


def time_load(path):
    "Seconds to load every field whole into memory (cold) and to read the file's bytes (cold)."
    drop_cache(path)
    t = time.perf_counter()
    with h5py.File(path, 'r') as f:
        for k in FIELDS:
            if direct_ok(f[k]):
                ours(f[k], np.arange(f[k].shape[0]))
            else:
                f[k].read_direct(np.empty(f[k].shape, f[k].dtype))
    t_load = time.perf_counter() - t
    forget()
    drop_cache(path)
    t = time.perf_counter()
    with open(path, 'rb') as fh:
        while fh.read(16 << 20):
            pass
    return t_load, time.perf_counter() - t


CHECKSUMS = '## Checksums'  # heading of the section written by --checksums (kept when the main table is rewritten)
COMPACT = '## Compact rows against the previous format'  # heading of the section written by --compact


def _fletcher_table(ds):
    """(row, chunk) -> file offset (-1: unallocated) of a one-row-chunk dataset, and the stored chunk size (data + 4
    checksum bytes)."""
    cp = ds.chunks[1]
    off = np.full((ds.shape[0], -(-ds.shape[1] // cp)), -1, np.int64)
    size = []

    def cb(si):
        off[si.chunk_offset[0], si.chunk_offset[1] // cp] = si.byte_offset
        size.append(si.size)

    ds.id.chunk_iter(cb)
    return off, size[0]


def _fletcher_kernel():
    """HDF5's Fletcher-32 of each chunk (big-endian 16-bit words; sums exact in float64, so the loop vectorises), then
    copy its data out."""
    import numba

    @numba.njit(nogil=True, cache=True, fastmath=True)
    def verify_copy(buf, sz, nb, dest, out, bad):
        w16 = buf.view(np.uint16)
        W = nb // 2
        for k in range(dest.shape[0]):
            a = k * sz
            blk = w16[a // 2 : a // 2 + W]
            s1 = 0.0
            s2 = 0.0
            for i in range(W):
                v = blk[i]
                w = np.float64((v >> 8) | ((v & 0xFF) << 8))
                s1 += w
                s2 += (W - i) * w
            t1, t2 = np.int64(s1), np.int64(s2)
            t1 = 0 if t1 == 0 else (t1 - 1) % 65535 + 1
            t2 = 0 if t2 == 0 else (t2 - 1) % 65535 + 1
            c = (
                np.int64(buf[a + nb])
                | (np.int64(buf[a + nb + 1]) << 8)
                | (np.int64(buf[a + nb + 2]) << 16)
                | (np.int64(buf[a + nb + 3]) << 24)
            )
            if c != ((t2 << 16) | t1):
                bad[0] = k
                return
            out[dest[k, 0] : dest[k, 0] + dest[k, 1]] = buf[a : a + dest[k, 1]]

    return verify_copy


_FK = []


def fletcher_direct(ds, rows):
    """The direct path on a fletcher32 layout: each run of chunks read with one os.preadv into a scratch buffer, every
    chunk's checksum checked, data copied out."""
    key = (ds.file.filename, ds.name)
    if key not in _TABLES:
        _TABLES[key] = (os.open(ds.file.filename, os.O_RDONLY), _fletcher_table(ds))
    if not _FK:
        _FK.append(_fletcher_kernel())
    fd, (off, sz) = _TABLES[key]
    out = np.zeros((len(rows), ds.shape[1]), ds.dtype)
    nb = ds.chunks[1] * out.dtype.itemsize
    rb = out.shape[1] * out.dtype.itemsize
    sel = off[rows]
    ri, ci = np.nonzero(sel >= 0)
    fo = sel[ri, ci]
    buf = np.empty(len(fo) * sz, np.uint8)
    mv = memoryview(buf)
    cut = np.flatnonzero((np.diff(fo) != sz) | (np.diff(ri) != 0)) + 1
    for a, b in zip(np.r_[0, cut].tolist(), np.r_[cut, len(fo)].tolist()):
        if os.preadv(fd, [mv[a * sz : b * sz]], int(fo[a])) != (b - a) * sz:
            raise OSError('short read')
    dest = np.stack([ri * rb + ci * nb, np.minimum(nb, rb - ci * nb)], 1).astype(np.int64)
    bad = np.full(1, -1, np.int64)
    _FK[0](buf, sz, nb, dest, out.reshape(-1).view(np.uint8), bad)
    if bad[0] >= 0:
        raise OSError(f'{ds.file.filename}: checksum mismatch in the chunk at byte {fo[bad[0]]}')
    return out


def checksums(a, grid, batches):
    """Random-batch speed of the chosen layout without and with fletcher32 (h5py's reader, our direct path + a compiled
    check), and sha256 costs."""
    n, d = a.n, Path(tempfile.mkdtemp(dir=a.dir))
    load0 = os.getloadavg()
    res = {}
    plain, fl = d / 'plain.h5', d / 'fletcher32.h5'
    sh = (n, grid.n)
    tw = {
        'plain': write(plain, grid, n, chunk_layout(sh, np.float32), True),
        'fletcher32': write(fl, grid, n, {**chunk_layout(sh, np.float32), 'fletcher32': True}, True),
    }
    with h5py.File(plain) as f, h5py.File(fl) as g:  # same rows either way
        for k in FIELDS:
            np.testing.assert_array_equal(ours(f[k], batches[0]), fletcher_direct(g[k], batches[0]))
    forget()
    readers = {
        'no filter, our direct reader (today)': (plain, ours),
        'fletcher32, h5py reader (the direct path disabled)': (fl, read_rows),
        'fletcher32, direct reader + Fletcher-32 checked in a compiled loop': (fl, fletcher_direct),
    }
    for rep in range(a.reps):  # interleaved, so that a change in the machine's load hits all readers alike
        for name, (p, reader) in readers.items():
            c = time_batches(p, batches, reader)
            forget()
            w = time_batches(p, batches[100:], reader, cold=False)
            forget()
            res.setdefault(name, []).append((*c, *w))
            print(name, res[name][-1], flush=True)
    x = np.stack([block(grid, 0, 256)[k] for k in FIELDS])
    t = time.perf_counter()
    hashlib.sha256(x).hexdigest()
    sha = x.nbytes / (time.perf_counter() - t) / 1e6
    med = {k: np.median(np.array(v), axis=0) for k, v in res.items()}
    base = med[next(iter(readers))]
    lines = [
        CHECKSUMS,
        '',
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; `python bench/storage.py --checksums --n {n}`; "
        f"{os.cpu_count()} shared CPUs, "
        f"load average {load0[0]:.2f} at the start and {os.getloadavg()[0]:.2f} at the end (another benchmark was "
        "running: compare the rows, "
        f"not the absolute figures; CPU-seconds vary less than wall time). h5py {h5py.__version__}, HDF5 "
        f"{h5py.version.hdf5_version}. "
        "Uncompressed chunks carry no checksum, so a flipped byte in a chunk of `regridded.h5` reads back silently. "
        "The chosen layout "
        f"({CHUNK_ROWS} × {CHUNK_PX} px, empty chunks unwritten) written without and with HDF5's `fletcher32` filter "
        f"({plain.stat().st_size / 1e6:,.1f} and {fl.stat().st_size / 1e6:,.1f} MB), random batches of {a.batch} (3 "
        "fields), "
        f"median of {a.reps} interleaved runs:",
        '',
        '| reader | cold: spectra/s wall (per CPU-s) | warm | CPU per spectrum ÷ today (warm) |',
        '|---|---|---|---|',
    ]
    for name, m in med.items():
        lines.append(f"| {name} | {m[0]:,.0f} ({m[1]:,.0f}) | {m[2]:,.0f} ({m[3]:,.0f}) | {base[3] / m[3]:.2f} |")
    lines += [
        '',
        f"sha256 of the arrays' bytes: {sha:,.0f} MB/s (one core, SHA-NI), so a full check of the {n:,}-spectrum "
        "sample's "
        f"{len(FIELDS)} fields ({x.nbytes / 256 * n / 1e9:.2f} GB as arrays) takes about "
        f"{x.nbytes / 256 * n / sha / 1e6:.1f} s "
        "on top of reading them (`RegriddedStore.load`).",
        '',
    ]
    for p in (plain, fl):
        p.unlink()
    return '\n'.join(lines)


def replace_section(path, text):
    """The results file with the section that `text` heads (`CHECKSUMS` or `COMPACT`) replaced by (or extended with)
    `text`."""
    old = Path(path).read_text() if Path(path).exists() else '# Storage benchmark'
    parts = ('\n' + old).split('\n## ')
    name = text.split('\n')[0][3:]
    keep = [p for p in parts[1:] if p.split('\n')[0] != name]
    return parts[0].strip('\n') + '\n\n' + ''.join('## ' + p.rstrip('\n') + '\n\n' for p in keep) + text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=2000)
    ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'storage.md'))
    ap.add_argument('--dir', default=None)
    ap.add_argument('--checksums', action='store_true', help='only the checksum section')
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--compact', action='store_true', help='only the compact-rows section')
    ap.add_argument(
        '--store',
        default=None,
        help='--compact: a regridded store to take the spectra from (default: a new mock sky of --stars stars)',
    )
    ap.add_argument('--stars', type=int, default=200)
    ap.add_argument('--tile', type=int, default=4, help='--compact: copies of the sample timed')
    a = ap.parse_args()
    grid = common_grid()
    n = a.n
    if a.compact:
        text = compact(a)
        atomic_write(a.out, replace_section(a.out, text))
        print(text)
        return
    rng = np.random.default_rng(1)
    batches = [rng.choice(n, a.batch, replace=False) for _ in range(200)]
    if a.checksums:
        text = checksums(a, grid, batches)
        atomic_write(a.out, replace_section(a.out, text))
        print(text)
        return
    d = Path(tempfile.mkdtemp(dir=a.dir))
    rows, raw = [], n * grid.n * 4 * len(FIELDS)
    check = block(grid, 0, min(n, 256))  # the first written block
    for name, (kw, skip) in layouts(n, grid.n).items():
        p = d / 'layout.h5'
        tw = write(p, grid, n, kw, skip)
        size = p.stat().st_size
        with h5py.File(p, 'r') as f:  # the layout returns the right rows
            for k in FIELDS:
                np.testing.assert_array_equal(ours(f[k], [3, 0, 7]), check[k][[3, 0, 7]])
            chunks = f[FIELDS[0]].chunks
        forget()
        ours_c = time_batches(p, batches, ours)
        ours_w = time_batches(p, batches[100:], ours, cold=False)
        forget()
        fancy_c = time_batches(p, batches[50:], h5py_fancy)
        t_load, t_file = time_load(p)
        rows.append(
            dict(
                name=name,
                chunks=chunks,
                size=size,
                ratio=raw / size,
                write=n / tw,
                ours_c=ours_c,
                ours_w=ours_w,
                fancy_c=fancy_c,
                load=raw / t_load / 1e6,
                file=size / t_file / 1e6,
            )
        )
        print(rows[-1], flush=True)
        p.unlink()
    base = next(r for r in rows if r['name'].startswith('h5py default'))
    chosen = next(r for r in rows if r['name'].startswith('chosen'))
    contig = next(r for r in rows if r['name'].startswith('contiguous'))
    lines = [
        '# Storage benchmark',
        '',
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs ({platform.machine()}), load "
        "average at the start "
        f"{os.getloadavg()[0]:.2f} (shared machine: absolute figures are indicative, ratios come from one run); Python "
        f"{platform.python_version()}, "
        f"h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}.",
        '',
        f"{n} spectra on the common grid ({grid.n} px) with realistic coverage (APOGEE, GALAH, Gaia-ESO UVES in turn: "
        "7-23% of the grid "
        f"covered, zeros elsewhere, noise in float32), fields {', '.join(FIELDS)} (what training reads): "
        f"{raw / 1e9:.2f} GB uncompressed. "
        f"Random batches of {a.batch} distinct rows, all three fields; 'cold' evicts the file from the page cache "
        "first "
        "(posix_fadvise DONTNEED; the host under this VM may still cache it, so cold is between disk and memory "
        "speed), 'warm' reads "
        "batches again with the file cached. Our reader (`RegriddedStore.read`: for unfiltered one-row chunks, chunk "
        "offsets looked up once and the bytes read with `os.preadv` into the output; otherwise sorted runs read in "
        "place through h5py; the chunk table is built on the first batch, inside the cold timing) against h5py fancy "
        "indexing (`ds[sorted rows]`, reordered). h5py's automatic chunk shape grows with N (here "
        f"{base['chunks']}; (157, 371) at 20,000 rows, (391, 186) at 200,000), so at full sample size the default "
        "layout reads even "
        "more unwanted rows per batch than measured here.",
        '',
        '| layout | chunks | file size (MB) | size ÷ uncompressed | write (spectra/s) | random batches, ours, cold: '
        'spectra/s wall (per CPU-s) | ours, warm | h5py fancy index, cold | whole load (MB/s of arrays) | file read '
        '(MB/s on disk) |',
        '|---|---|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['chunks']} | {r['size'] / 1e6:,.0f} | {1 / r['ratio']:.3f} | {r['write']:,.0f} | "
            f"{r['ours_c'][0]:,.0f} ({r['ours_c'][1]:,.0f}) | "
            f"{r['ours_w'][0]:,.0f} ({r['ours_w'][1]:,.0f}) | {r['fancy_c'][0]:,.0f} ({r['fancy_c'][1]:,.0f}) | "
            f"{r['load']:,.0f} | {r['file']:,.0f} |"
        )
    x = lambda r, k, i: r[k][i]
    lines += [
        '',
        f"**Goal: random batches of {a.batch} at least 5× faster than h5py's default (gzip) layout.** Chosen layout "
        "with our reader, "
        f"cold: {chosen['ours_c'][0]:,.0f} spectra/s (wall; {chosen['ours_c'][1]:,.0f} per CPU-second) against "
        f"{base['fancy_c'][0]:,.0f} "
        f"({base['fancy_c'][1]:,.0f}) for the default layout read with h5py fancy indexing: "
        f"**{chosen['ours_c'][0] / base['fancy_c'][0]:.1f}× "
        f"wall, {chosen['ours_c'][1] / base['fancy_c'][1]:.1f}× CPU**; against the default layout read with our reader "
        f"({base['ours_c'][0]:,.0f}) "
        f"{chosen['ours_c'][0] / base['ours_c'][0]:.1f}×; against the contiguous layout ({contig['ours_c'][0]:,.0f}) "
        f"{chosen['ours_c'][0] / contig['ours_c'][0]:.1f}×. File size {chosen['size'] / 1e6:,.0f} MB against "
        f"{raw / 1e6:,.0f} MB "
        f"uncompressed ({raw / chosen['size']:.1f}× smaller) and {base['size'] / 1e6:,.0f} MB for gzip.",
        '',
        f"**Whole sample into memory** (`RegriddedStore.load`, cold): {raw / 1e6:,.0f} MB of arrays in "
        f"{raw / chosen['load'] / 1e6:.2f} s "
        f"({chosen['load']:,.0f} MB/s of arrays) from the {chosen['size'] / 1e6:,.0f} MB file; reading just the bytes "
        "of that file takes "
        f"{chosen['size'] / chosen['file'] / 1e6:.2f} s ({chosen['file']:,.0f} MB/s) and those of the contiguous "
        "(dense) file "
        f"{raw / contig['file'] / 1e6:.2f} s, while h5py loads the contiguous layout in "
        f"{raw / contig['load'] / 1e6:.2f} s: loading the store "
        f"takes {raw / chosen['load'] / (raw / contig['file']):.1f}× the time the disk needs to deliver the dense "
        "arrays. "
        f"One random batch of {a.batch} (3 fields) takes {a.batch / chosen['ours_c'][0] * 1e3:.0f} ms wall "
        f"({a.batch / chosen['ours_c'][1] * 1e3:.0f} ms of CPU) cold.",
        '',
    ]
    old = Path(a.out).read_text() if Path(a.out).exists() else ''
    keep = (
        '\n## ' + old.split('\n## ', 1)[1] if '\n## ' in old else ''
    )  # the sections measured separately (--checksums, --compact)
    atomic_write(a.out, "\n".join(lines) + keep)
    print('\n'.join(lines))


def pipeline_sample(a, d):
    """(grid, full-precision arrays, table) of the spectra of a store (--store) or of a new mock sky of --stars stars,
    as `preprocess_spectrum` makes them."""
    if a.store:
        with open_regridded(a.store) as st:
            if st.codec is not None and st.codec.streams != st.codec.pixel_fields:
                sys.exit(f'{a.store} holds noise-precision rows: give a store of full precision, or --stars')
            return st.grid, st.load(st.fields), st.meta
    from stellar_spectra.mock.mocksky import generate_mock_sky
    from stellar_spectra.pipeline.crossmatch import crossmatch_surveys
    from stellar_spectra.pipeline.preprocess import work_plan, preprocess_spectrum
    from stellar_spectra.io.readers import read_spectrum

    generate_mock_sky(d / 'sky', n_stars=a.stars, seed=42, progress=False)
    plan = work_plan(d / 'sky', crossmatch_surveys(d / 'sky', d / 'xm.parquet', progress=False)['out'])
    grid, rows, meta = common_grid(), [], []
    for r in plan.itertuples():
        x, m = preprocess_spectrum(read_spectrum(d / 'sky' / r.relpath), grid, rv=r.rv)
        rows.append(x)
        meta.append(dict(m, star=r.star, source=r.relpath))
    shutil.rmtree(d / 'sky')
    return grid, {k: np.stack([x[k] for x in rows]) for k in rows[0]}, pd.DataFrame(meta)


def cpu_name():
    "The processor's model name (from /proc/cpuinfo), else the machine type."
    try:
        return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration):
        return platform.machine()


def time_reads(path, rows_list, pix=None, cold=True, threads=None):
    "Spectra per second (wall, and per CPU-second) reading the training fields of these batches of rows."
    if cold:
        drop_cache(path)
    with open_regridded(path) as st:
        if threads:
            st.threads = threads
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        for rows in rows_list:
            st.read(rows, FIELDS, pix)
            n += len(rows)
        return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def time_file(path):
    "MB/s reading the file's bytes, cold."
    drop_cache(path)
    t = time.perf_counter()
    with open(path, 'rb') as fh:
        while fh.read(16 << 20):
            pass
    return Path(path).stat().st_size / (time.perf_counter() - t) / 1e6


def chi2_check(grid, arrays, path):
    """Largest relative change of a spectrum's chi2 (and of the total) against a model at the noise level, stored rows
    against full precision."""
    with open_regridded(path) as st:
        got = st.load(FIELDS)
    nf, ni, w = (arrays[k].astype(np.float64) for k in FIELDS)
    model = nf + np.random.default_rng(0).normal(size=nf.shape) / np.sqrt(np.where(ni > 0, ni, np.inf))
    c0 = (w * ni * (nf - model) ** 2).sum(1)
    c1 = (got['weight'] * got['norm_ivar'] * (got['norm_flux'] - model) ** 2).sum(1)
    ok = c0 > 0
    return np.abs(c1[ok] / c0[ok] - 1).max(), abs(c1.sum() / c0.sum() - 1), (c0[ok] / (w * ni > 0).sum(1)[ok]).mean()


def compact(a):
    """The compact-rows section: bytes, reads and chi2 of the store stage's rows against the previous format, on the
    pipeline's spectra."""
    from stellar_spectra.model.training import pack_store

    d = Path(tempfile.mkdtemp(dir=a.dir))
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    grid, arrays, meta = pipeline_sample(a, d)
    N = len(meta)
    print(f'{N} spectra in {time.perf_counter() - t0:.0f} s', flush=True)
    fmt = {
        'previous format (whole-grid arrays, one-row chunks)': dict(layout='grid'),
        'compact rows, noise precision (the store stage)': dict(precision='noise'),
    }
    size, tw = {}, {}
    for (
        name,
        kw,
    ) in (
        fmt.items()
    ):  # bytes on the sample itself (after a first write and read: numba's compiled loops are loaded once per process)
        with open_regridded(
            write_regridded(d / 'warm.h5', grid, {k: v[:2] for k, v in arrays.items()}, meta[:2], **kw)
        ) as st:
            st.read([1, 0], FIELDS)
        t = time.perf_counter()
        p = write_regridded(d / 'one.h5', grid, arrays, meta, **kw)
        tw[name] = N / (time.perf_counter() - t)
        size[name] = p.stat().st_size
    with h5py.File(d / 'one.h5') as f:
        row_bytes = np.diff(f['rows/offset'][()])
    per_survey = {s: row_bytes[meta['survey'].to_numpy() == s].mean() for s in sorted(set(meta['survey']))}
    tiled = {k: np.tile(v, (a.tile, 1)) for k, v in arrays.items()}
    tmeta = pd.concat([meta] * a.tile, ignore_index=True)
    tmeta['star'] = np.repeat(np.arange(a.tile), N) * (meta['star'].max() + 1) + np.tile(
        meta['star'].to_numpy(), a.tile
    )
    paths = {name: write_regridded(d / f'{i}.h5', grid, tiled, tmeta, **kw) for i, (name, kw) in enumerate(fmt.items())}
    NT, rng = N * a.tile, np.random.default_rng(1)
    batches = [rng.choice(NT, min(a.batch, NT), replace=False) for _ in range(max(8, 4 * NT // a.batch))]
    pix = np.flatnonzero(arrays['weight'].any(0))  # pack_store's pixels (here the union over surveys)
    runs = {name: [] for name in paths}
    for rep in range(a.reps):  # interleaved, so that a change in the machine's load hits both formats alike; medians
        for name, p in paths.items():
            r = {}
            r['batch cold'] = time_reads(p, batches)
            r['batch warm'] = time_reads(p, batches, cold=False)
            r['batch pix cold'] = time_reads(p, batches, pix)
            r['batch 1 thread'] = time_reads(p, batches, cold=False, threads=1)
            r['load'] = time_reads(p, [np.arange(NT)])
            r['load pix'] = time_reads(p, [np.arange(NT)], pix)
            r['load pix 1 thread'] = time_reads(p, [np.arange(NT)], pix, threads=1)
            r['file'] = time_file(p)
            drop_cache(p)
            t = time.perf_counter()
            pack_store(str(p))
            r['pack_store'] = NT / (time.perf_counter() - t)
            runs[name].append(r)
            print(name, r, flush=True)
    res = {name: {k: np.median([r[k] for r in v], axis=0) for k in v[0]} for name, v in runs.items()}
    c_max, c_tot, c_px = chi2_check(grid, arrays, d / 'one.h5')
    prev, new = list(fmt)
    for p in [d / 'one.h5', d / 'warm.h5', *paths.values()]:
        p.unlink()
    f = lambda x: f'{x[0]:,.0f} ({x[1]:,.0f})'
    lines = [
        COMPACT,
        '',
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; `python bench/storage.py "
        f"--compact{' --store ' + a.store if a.store else f' --stars {a.stars}'} --tile {a.tile}`; "
        f"{cpu_name()}, {os.cpu_count()} CPUs shared with other work (load average {load0[0]:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end), "
        f"no GPU; Python {platform.python_version()}, h5py {h5py.__version__}, pyarrow {pa.__version__}.",
        '',
        f"The spectra: {N} from the mock sky's pipeline "
        f"({', '.join(f'{(meta.survey == s).sum()} {s}' for s in per_survey)}), full precision as "
        "`preprocess_spectrum` makes them, "
        f"all six fields. Bytes are measured on them; reads on {a.tile} copies of them ({NT} spectra, "
        f"{NT * grid.n * 12 / 1e9:.2f} GB as whole-grid arrays of the 3 training fields). "
        f"Random batches of {min(a.batch, NT)} rows, the 3 training fields (norm_flux, norm_ivar, weight), as "
        f"whole-grid arrays or at pack_store's {len(pix):,} observed pixels ('pix'); "
        "'cold' evicts the file from the page cache first (the host may still cache it). Spectra per second, wall "
        f"(per CPU-second), median of {a.reps} interleaved runs; "
        f"the reader decodes on {RegriddedStore.threads} threads unless one is said.",
        '',
        f"| | {prev} | {new} |",
        '|---|---|---|',
        f"| file size | {size[prev] / 1e6:,.1f} MB | {size[new] / 1e6:,.2f} MB |",
        f"| **bytes per spectrum** | **{size[prev] / N / 1e3:,.0f} KB** | **{size[new] / N / 1e3:,.1f} KB** (rows "
        f"alone: {row_bytes.mean() / 1e3:.1f} KB; "
        + ', '.join(f'{s} {v / 1e3:.1f}' for s, v in per_survey.items())
        + f"; equal mix of the three {np.mean(list(per_survey.values())) / 1e3:.1f}) |",
        f"| write (spectra/s) | {tw[prev]:,.0f} | {tw[new]:,.0f} |",
    ]
    for k, label in [
        ('batch cold', 'random batches, whole grid, cold'),
        ('batch warm', 'random batches, whole grid, warm'),
        ('batch 1 thread', '... warm, one thread'),
        ('batch pix cold', 'random batches at the observed pixels, cold'),
        ('load', 'whole sample, whole grid, cold'),
        ('load pix', 'whole sample at the observed pixels, cold'),
        ('load pix 1 thread', '... one thread'),
        ('pack_store', '`training.pack_store` as it is today, cold'),
    ]:
        lines.append(
            f"| {label} | {f(res[prev][k]) if k != 'pack_store' else f'{res[prev][k]:,.0f}'} | "
            f"{f(res[new][k]) if k != 'pack_store' else f'{res[new][k]:,.0f}'} |"
        )
    lines.append(
        f"| reading the file's bytes, cold (MB/s; spectra/s) | {res[prev]['file']:,.0f}; "
        f"{res[prev]['file'] * 1e6 / (size[prev] / N):,.0f} | {res[new]['file']:,.0f}; "
        f"{res[new]['file'] * 1e6 / (size[new] / N):,.0f} |"
    )
    lines += [
        '',
        f"chi2 of a model at the noise level (chi2 / pixel {c_px:.2f}) against the stored rows instead of full "
        "precision: largest change of a spectrum's chi2 "
        f"{c_max:.1e}, of the total {c_tot:.1e} (`tests/test_storage.py` asserts < 1e-3 and < 1e-4, also for a "
        "smoothed model).",
        '',
    ]
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
