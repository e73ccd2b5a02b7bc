"""Storage: compact rows within their stated precision (and the chi2 a model sees unchanged) on the mock sky's pipeline
output, exact round trips (compact exact, grid layout, Parquet), random batches, shards merged exactly once, clear
errors on bad stores."""

import json, os, pickle, subprocess, sys
from pathlib import Path
import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from stellar_spectra.pipeline.resample import common_grid
from stellar_spectra.spectrum import Spectrum, PixelFlag
from stellar_spectra.pipeline.regridded import StoreError, write_regridded, open_regridded
from stellar_spectra.mock.fixtures import demo_sample
from stellar_spectra.pipeline.native import write_native, read_native, read_native_meta
from stellar_spectra.pipeline.storage import write_shard, completed_shards, merge_shards, SPEC_ORDER
from stellar_spectra.pipeline.h5chunks import NOISE_PRECISION

ROOT = Path(__file__).resolve().parents[1]
GRID = common_grid(wmin=5000, wmax=5600)  # 3,400 px: small, but several chunks wide with chunk_px=1000


def sample(n=30, seed=0):
    "Arrays with NaN, inf, -0.0, extreme flags and an extra int16 array; a table with strings, bools and NaN."
    grid, arrays, meta = demo_sample(n, GRID, seed)
    f = arrays['norm_flux']
    f[0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    f[1, -1] = np.float32(1e-45)  # subnormal
    arrays['flags'][2, :3] = [np.iinfo(np.int32).max, np.iinfo(np.int32).min, -1]
    arrays['extra'] = np.arange(n * grid.n, dtype=np.int16).reshape(n, grid.n) % 7
    meta['good'] = np.arange(n) % 2 == 0
    meta.loc[3, 'teff'] = np.nan
    meta.loc[4, 'star_id'] = 'ünïcode ☆'
    meta['big'] = np.int64(2**62) + np.arange(n)
    return grid, arrays, meta


def same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a.view(f'u{a.dtype.itemsize}'), b.view(f'u{b.dtype.itemsize}'))


def within(got: dict, want: dict):
    """Compact rows of 'noise' precision: flags, weight and other exact fields bit for bit; fluxes within
    NOISE_PRECISION x sigma, ivars within it relatively."""
    for k, v in got.items():
        w = want[k].astype(v.dtype)
        if k not in NOISE_PRECISION:
            same_bits(v, w)
            continue
        iv = want['norm_ivar' if k == 'norm_flux' else 'ivar' if k == 'flux' else k].astype(np.float64)
        ok = iv > 0
        same_bits(v[~ok], w[~ok])  # no noise to hide an error in: exact
        err = (
            np.abs(v[ok] - w[ok].astype(np.float64)) * np.sqrt(iv[ok])
            if k.endswith('flux')
            else np.abs(v[ok] / w[ok].astype(np.float64) - 1)
        )
        assert err.max(initial=0) <= NOISE_PRECISION[k], (k, err.max())


@pytest.mark.parametrize(
    'compression,chunk_px', [(c, p) for c in (None, 'lzf', 'gzip') for p in (1000, None)] + [('compact', None)]
)
def test_hdf5_round_trip_exact(tmp_path, compression, chunk_px):
    grid, arrays, meta = sample()
    kw = (
        dict(compression=compression, chunk_px=chunk_px, layout='grid') if compression != 'compact' else {}
    )  # compact: precision='exact'
    write_regridded(tmp_path / 'r.h5', grid, arrays, meta, **kw)
    assert [p.name for p in tmp_path.iterdir()] == ['r.h5']  # no temporary file left
    with open_regridded(tmp_path / 'r.h5') as st:
        assert st.grid == grid and len(st) == 30 and sorted(st.fields) == sorted(arrays)
        np.testing.assert_array_equal(st.file['grid/ln_wave'][()], grid.ln_wave)
        pd.testing.assert_frame_equal(st.meta, meta)
        for k, v in st.load(list(arrays)).items():
            same_bits(v, arrays[k].astype(v.dtype))
        assert st.load(('extra',))['extra'].dtype == np.int16


def test_float64_and_missing_spec_id(tmp_path):
    grid, arrays, meta = sample(6)
    arrays['flux'] = arrays['flux'].astype(np.float64)
    meta = meta.drop(columns='spec_id')
    write_regridded(tmp_path / 'r.h5', grid, arrays, meta)
    with open_regridded(tmp_path / 'r.h5') as st:
        assert st.meta.spec_id.tolist() == list(range(6)) and st.read([1], ('flux',))['flux'].dtype == np.float32
    with pytest.raises(ValueError, match='spec_id must be the row number'):
        write_regridded(tmp_path / 'bad.h5', grid, arrays, meta.assign(spec_id=np.arange(6)[::-1]))
    with pytest.raises(ValueError, match="array 'flux' has shape"):
        write_regridded(tmp_path / 'bad.h5', grid, {'flux': np.zeros((6, 10))}, meta)
    assert not (tmp_path / 'bad.h5').exists()


@pytest.mark.parametrize('compression', [None, 'gzip', 'compact'])
def test_random_batches_right_rows(tmp_path, compression):
    grid, arrays, meta = sample(60, seed=3)
    write_regridded(
        tmp_path / 'r.h5',
        grid,
        arrays,
        meta,
        **(dict(compression=compression, chunk_px=1000, layout='grid') if compression != 'compact' else {}),
    )
    rng = np.random.default_rng(0)
    with open_regridded(tmp_path / 'r.h5') as st:
        for size in (1, 7, 40, 256):
            rows = rng.integers(0, 60, size)  # unsorted, with duplicates
            got = st.read(rows, fields=('norm_flux', 'flags', 'weight'))
            for k, v in got.items():
                same_bits(v, arrays[k][rows])
            pix = np.unique(rng.integers(0, grid.n, 50))
            for k, v in st.read(rows, ('norm_flux', 'flags', 'weight'), pix=pix).items():
                same_bits(v, arrays[k][rows][:, pix])
        got = st.read(np.arange(59, -1, -1), ('norm_flux',))['norm_flux']
        same_bits(got, arrays['norm_flux'][::-1])
        seen = []
        for b in st.batches(16, seed=5, fields=('norm_ivar',)):
            same_bits(b['norm_ivar'], arrays['norm_ivar'][b['rows']])
            seen.append(b['rows'])
        seen = np.concatenate(seen)
        assert sorted(seen) == list(range(60)) and list(seen) != list(range(60))
        assert [b['rows'].tolist() for b in st.batches(16, seed=5)] == [
            b['rows'].tolist() for b in st.batches(16, seed=5)
        ]
        assert [len(b['rows']) for b in st.batches(16, shuffle=False, drop_last=True)] == [16, 16, 16]
        for a, b in zip(st.batches(16, seed=2, prefetch=False), st.batches(16, seed=2, prefetch=True)):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
        it = st.batches(8)
        next(it)
        it.close()  # abandoning a prefetching iterator is clean
        sub = next(st.batches(5, rows=st.rows_of_survey('galah')))['rows']
        assert set(sub) <= set(np.flatnonzero(meta.survey == 'galah'))
        for star, g in meta.groupby('star'):
            assert st.rows_of_star(star).tolist() == g.index.tolist()
        for s, g in meta.groupby('survey'):
            assert st.rows_of_survey(s).tolist() == g.index.tolist()
        with pytest.raises(IndexError):
            st.read([60])
        with pytest.raises(IndexError):
            st.read([-1])


def test_store_pickles_for_workers(tmp_path):
    grid, arrays, meta = sample(8)
    write_regridded(tmp_path / 'r.h5', grid, arrays, meta)
    st = open_regridded(tmp_path / 'r.h5')
    st.read([1])
    st2 = pickle.loads(pickle.dumps(st))
    same_bits(st2.read([3, 1])['weight'], arrays['weight'][[3, 1]])
    st.close()
    st2.close()


def spectra(n=7, seed=0):
    "Native spectra with NaN / inf flux, bad errors, survey flags of several dtypes (or none), nested meta."
    rng, out = np.random.default_rng(seed), []
    dts = [np.uint16, np.int64, np.uint32, bool, None]
    for i in range(n):
        w = np.sort(rng.uniform(4700, 4900, 100 + 37 * i))
        w = np.unique(w)
        fl = rng.normal(1, 0.1, len(w))
        fl[:2] = [np.nan, np.inf]
        iv = rng.uniform(0, 2, len(w))
        iv[5] = -1
        dt = dts[i % len(dts)]
        sf = None if dt is None else rng.integers(0, 2 if dt is bool else 60000, len(w)).astype(dt)
        out.append(
            Spectrum(
                w,
                fl,
                iv,
                flags=rng.integers(0, 2048, len(w)),
                survey_flags=sf,
                frame=('observed', 'barycentric', 'rest')[i % 3],
                R=np.nan if i == 2 else 22000.0,
                survey=('galah', 'ges')[i % 2],
                product='uves',
                star_id=f'★{i}',
                visit_id='' if i % 2 else 'v1',
                ra=np.nan,
                dec=-12.5,
                snr=float(i),
                rv=1e-300,
                bc=-0.0,
                flux_unit='erg / (Angstrom s cm2)',
                meta={
                    'segments': [('ccd1', 0, 10), ('ccd2', 10, len(w))],
                    'arr': np.arange(3, dtype=np.int16),
                    'x': None,
                    'deep': {'t': (1.5, 'a', [1, (2,)])},
                    'f': np.float64(np.pi),
                },
            )
        )
    return out


def assert_same(a, b):
    for k in ('wave', 'flux', 'ivar', 'flags'):
        same_bits(getattr(a, k), getattr(b, k))
    if a.survey_flags is None:
        assert b.survey_flags is None
    else:
        assert a.survey_flags.dtype == b.survey_flags.dtype
        np.testing.assert_array_equal(a.survey_flags, b.survey_flags)
    for k in ('frame', 'R', 'survey', 'product', 'star_id', 'visit_id', 'ra', 'dec', 'snr', 'rv', 'bc', 'flux_unit'):
        x, y = getattr(a, k), getattr(b, k)
        assert type(x) is type(y)
        np.testing.assert_equal(x, y)
        if isinstance(x, float):
            assert np.signbit(x) == np.signbit(y)
    assert a.meta.keys() == b.meta.keys()
    for k in a.meta:
        if isinstance(a.meta[k], np.ndarray):
            assert a.meta[k].dtype == b.meta[k].dtype
            np.testing.assert_array_equal(a.meta[k], b.meta[k])
        else:
            assert a.meta[k] == b.meta[k]


def test_parquet_round_trip_exact(tmp_path):
    sp = spectra()
    assert sp[0].flags[0] & PixelFlag.NONFINITE and sp[0].flags[1] & PixelFlag.NONFINITE and sp[0].ivar[5] == 0
    write_native(
        tmp_path / 'n.parquet',
        sp,
        pd.DataFrame({'spec_id': np.arange(7), 'star': np.arange(7) * 10, 'survey': 'ignored'}),
        row_group_size=3,
    )
    assert [p.name for p in tmp_path.iterdir()] == ['n.parquet'] and pq.ParquetFile(
        tmp_path / 'n.parquet'
    ).num_row_groups == 3
    for a, b in zip(sp, read_native(tmp_path / 'n.parquet')):
        assert_same(a, b)
    rows = [6, 0, 4, 4, 1]
    for i, b in zip(rows, read_native(tmp_path / 'n.parquet', rows=rows)):
        assert_same(sp[i], b)
    assert read_native(tmp_path / 'n.parquet', rows=[]) == []
    m = read_native_meta(tmp_path / 'n.parquet')
    assert m.star.tolist() == [0, 10, 20, 30, 40, 50, 60] and m.survey.tolist() == [
        s.survey for s in sp
    ]  # Spectrum fields win
    write_native(tmp_path / 'empty.parquet', [])
    assert read_native(tmp_path / 'empty.parquet') == []
    with pytest.raises(IndexError):
        read_native(tmp_path / 'n.parquet', rows=[7])


def shard_inputs(n=24, seed=0):
    grid, arrays, meta = demo_sample(n, GRID, seed)
    meta = meta.sample(frac=1, random_state=1).reset_index(drop=True)  # shards need not come in star order
    arrays = {k: v[meta.spec_id.to_numpy()] for k, v in arrays.items()}
    return grid, arrays, meta.drop(columns='spec_id'), spectra(n, seed)


def write_chunks(sd, grid, arrays, meta, native, size, prefix='c', stop=None):
    "Write shards of `size` rows, skipping complete ones (a resumable run); stop after `stop` shards (an interruption)."
    done, written = completed_shards(sd), 0
    for i in range(0, len(meta), size):
        key = f'{prefix}{i:05d}'
        if key in done:
            continue
        if stop is not None and written == stop:
            raise KeyboardInterrupt
        sl = slice(i, i + size)
        write_shard(sd, key, {k: v[sl] for k, v in arrays.items()}, meta[sl], native[sl], grid=grid)
        written += 1
    return written


def check_merged(out, arrays, meta, native):
    "Every input spectrum exactly once, in SPEC_ORDER, with its arrays and native spectrum."
    order = meta.sort_values(list(SPEC_ORDER), kind='stable').index.to_numpy()
    with open_regridded(out / 'regridded.h5') as st:
        assert st.meta.spec_id.tolist() == list(range(len(meta)))
        assert st.meta.source.tolist() == meta.source[order].tolist()
        assert not st.meta.duplicated(['survey', 'source', 'visit_id']).any()
        within(st.load(list(arrays)), {k: v[order] for k, v in arrays.items()})
    n = 0
    for s in sorted(set(meta.survey)):
        nm = read_native_meta(out / f'native_{s}.parquet')
        rows = order[nm.spec_id.to_numpy()]
        n += len(nm)
        assert nm.source.tolist() == meta.source[rows].tolist() and nm.star.tolist() == meta.star[rows].tolist()
        for i, b in zip(rows, read_native(out / f'native_{s}.parquet')):
            assert_same(native[i], b)
    assert n == len(meta)


def test_merge_interrupted_and_resumed(tmp_path):
    grid, arrays, meta, native = shard_inputs()
    sd = tmp_path / 'shards'
    with pytest.raises(KeyboardInterrupt):
        write_chunks(sd, grid, arrays, meta, native, 5, stop=2)
    (sd / '.c00010.h5.abc123.part').write_bytes(b'half a shard')  # the temporary file of the killed write
    assert completed_shards(sd) == {'c00000', 'c00005'}
    assert write_chunks(sd, grid, arrays, meta, native, 5) == 3  # resumes: only the missing shards
    assert write_chunks(sd, grid, arrays, meta, native, 5) == 0
    s = merge_shards(sd, tmp_path / 'out', progress=False)
    assert s['n_spectra'] == 24 and s['n_shards'] == 5 and s['n_duplicates_dropped'] == 0
    assert s['per_survey'] == meta.survey.value_counts().sort_index().to_dict()
    check_merged(tmp_path / 'out', arrays, meta, native)
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [
        'native_apogee.parquet',
        'native_galah.parquet',
        'native_ges.parquet',
        'regridded.h5',
        'store_summary.json',
    ]


def test_merge_block_spanning_many_shards(tmp_path):
    "A copy block reading more shards than the open-file cache holds (here 24 one-row shards in one block)."
    grid, arrays, meta, native = shard_inputs()
    sd = tmp_path / 'shards'
    assert write_chunks(sd, grid, arrays, meta, native, 1) == 24
    s = merge_shards(sd, tmp_path / 'out', progress=False, block=256)
    assert s['n_spectra'] == 24 and s['n_shards'] == 24
    check_merged(tmp_path / 'out', arrays, meta, native)


def test_merge_rewritten_and_overlapping_shards(tmp_path):
    grid, arrays, meta, native = shard_inputs(seed=2)
    sd = tmp_path / 'shards'
    write_chunks(sd, grid, arrays, meta, native, 5)
    write_chunks(
        sd, grid, arrays, meta, native, 8, prefix='rerun'
    )  # a re-run with another chunk size: every spectrum twice
    key = 'c00005'
    write_shard(sd, key, {k: v[5:10] for k, v in arrays.items()}, meta[5:10], native[5:10], grid=grid)  # re-written
    # an incomplete pair: a new Parquet whose HDF5 never came (killed between the two writes) -> not complete, old pair
    # ignored
    write_shard(sd, 'lonely', {k: v[:2] for k, v in arrays.items()}, meta[:2], native[:2], grid=grid)
    pq.write_table(
        pq.read_table(sd / 'lonely.parquet').replace_schema_metadata({b'shard_token': b'other'}), sd / 'lonely.parquet'
    )
    (sd / 'junk.h5').write_bytes(b'\x89HDF\r\n\x1a\n truncated')  # unreadable: not complete
    assert 'lonely' not in completed_shards(sd) and 'junk' not in completed_shards(sd)
    s = merge_shards(sd, tmp_path / 'out', progress=False)
    assert s['n_spectra'] == 24 and s['n_duplicates_dropped'] == 24
    check_merged(tmp_path / 'out', arrays, meta, native)


def test_merge_checks_grid_and_columns(tmp_path):
    grid, arrays, meta, native = shard_inputs(6)
    write_shard(tmp_path / 'a', 'x', arrays, meta, native, grid=grid)
    with pytest.raises(StoreError, match='shards are on'):
        merge_shards(tmp_path / 'a', tmp_path / 'o', grid=common_grid(), progress=False)
    write_shard(tmp_path / 'b', 'x', arrays, meta.drop(columns='source'), native)
    with pytest.raises(StoreError, match=r"lack columns \['source'\]"):
        merge_shards(tmp_path / 'b', tmp_path / 'o', progress=False)
    with pytest.raises(StoreError, match='no complete shards'):
        merge_shards(tmp_path / 'none', tmp_path / 'o', progress=False)
    # a shard writer that names the file 'relpath' and numbers rows itself (the preprocess work plan): kept as plan_id
    m = meta.rename(columns={'source': 'relpath'}).assign(spec_id=np.arange(100, 106))
    write_shard(tmp_path / 'c', 'x', arrays, m, native, grid=grid)
    merge_shards(tmp_path / 'c', tmp_path / 'o', progress=False)
    with open_regridded(tmp_path / 'o' / 'regridded.h5') as st:
        assert sorted(st.meta.plan_id) == list(range(100, 106)) and st.meta.spec_id.tolist() == list(range(6))


def test_merge_parts_with_colliding_keys(tmp_path):
    """A run preprocessed in parts: each part numbers its shards from 0 (keys collide), one spectrum is in two parts;
    merged once, as from one folder."""
    grid, arrays, meta, native = shard_inputs(seed=3)
    parts, one = [tmp_path / f'part_{i:04d}' / 'shards' for i in range(3)], tmp_path / 'one'
    for i, (sd, sl) in enumerate(zip(parts, (slice(0, 10), slice(9, 17), slice(17, 24)))):  # row 9 in parts 0 and 1
        part = ({k: v[sl] for k, v in arrays.items()}, meta[sl], native[sl])
        write_chunks(sd, grid, *part, 4)
        write_chunks(one, grid, *part, 4, prefix=f'p{i}_')  # the same shards, distinct keys in one folder
    assert completed_shards(parts[1]) == {'c00000', 'c00004'} <= completed_shards(parts[0])
    s = merge_shards(tuple(parts[:1]) + (str(parts[1]), parts[2]), tmp_path / 'out', progress=False)
    ref = merge_shards(one, tmp_path / 'ref', progress=False)
    assert (s['n_spectra'], s['n_shards'], s['n_folders'], s['n_duplicates_dropped']) == (
        24,
        7,
        3,
        1,
    ) and 'n_folders' not in ref
    assert {k: v for k, v in s.items() if k != 'n_folders'} == ref
    check_merged(tmp_path / 'out', arrays, meta, native)
    with h5py.File(tmp_path / 'out' / 'regridded.h5') as f, h5py.File(tmp_path / 'ref' / 'regridded.h5') as g:
        for k in ('rows/heap', 'rows/offset', 'rows/frame'):
            assert np.array_equal(f[k][()], g[k][()]), k
    with open_regridded(tmp_path / 'out' / 'regridded.h5') as a, open_regridded(tmp_path / 'ref' / 'regridded.h5') as b:
        pd.testing.assert_frame_equal(a.meta, b.meta)
    for sv in sorted(set(meta.survey)):
        pd.testing.assert_frame_equal(
            *[pq.read_table(tmp_path / o / f'native_{sv}.parquet').to_pandas() for o in ('out', 'ref')]
        )
    (parts[2].parent / 'summary.json').write_text(
        json.dumps({'aligned': False, 'misaligned': 'ges: off'})
    )  # each part's guard is checked
    with pytest.raises(StoreError, match=r'part_0002/summary\.json: the preprocess run failed'):
        merge_shards(parts, tmp_path / 'bad', progress=False)
    (parts[2].parent / 'summary.json').unlink()
    (parts[1] / 'c00000.h5').write_bytes(b'\x89HDF junk')  # not complete: skipped, its rows lost
    (parts[1] / 'c00004.parquet').write_bytes(b'x')
    assert merge_shards(parts, tmp_path / 'out2', progress=False)['n_shards'] == 5
    with pytest.raises(StoreError, match='no complete shards to merge'):
        merge_shards([tmp_path / 'x', tmp_path / 'y'], tmp_path / 'bad', progress=False)
    assert not (tmp_path / 'bad').exists()


@pytest.mark.parametrize('layout', ['grid', 'compact'])
def test_bad_hdf5_stores(tmp_path, layout):
    grid, arrays, meta = sample(6)
    p = write_regridded(tmp_path / 'r.h5', grid, arrays, meta, layout=layout)
    raw = p.read_bytes()

    def err(path, match):
        with pytest.raises(StoreError, match=match) as e:
            open_regridded(path).read([0, 1], fields=('weight',))
        assert str(path) in str(e.value) and e.value.path == str(path)

    err(tmp_path / 'missing.h5', 'no such file')
    (tmp_path / 'cut.h5').write_bytes(raw[: len(raw) // 2])
    err(tmp_path / 'cut.h5', 'truncated or corrupt')
    (tmp_path / 'cut2.h5').write_bytes(raw[:-10])
    err(tmp_path / 'cut2.h5', 'truncated or corrupt')
    (tmp_path / 'junk.h5').write_bytes(os.urandom(5000))
    err(tmp_path / 'junk.h5', 'not a readable HDF5')
    (tmp_path / 'zero.h5').write_bytes(b'\0' * 64 + raw[64:])
    err(tmp_path / 'zero.h5', 'not a readable HDF5')
    drops = (
        [('nodata.h5', 'arrays/weight', "missing array 'weight'")]
        if layout == 'grid'
        else [('norows.h5', 'rows', "missing 'rows'"), ('nooffset.h5', 'rows/offset', "cannot read the rows")]
    )
    for name, drop, match in drops + [('nometa.h5', 'meta', "missing 'meta'"), ('nogrid.h5', 'grid', "missing 'grid'")]:
        (tmp_path / name).write_bytes(raw)
        with h5py.File(tmp_path / name, 'a') as f:
            del f[drop]
        err(tmp_path / name, match)
    (tmp_path / 'short.h5').write_bytes(raw)
    with h5py.File(tmp_path / 'short.h5', 'a') as f:
        if layout == 'grid':
            del f['arrays/flux']
            f['arrays/flux'] = np.zeros((5, grid.n), np.float32)
        else:
            off = f['rows/offset'][()]
            del f['rows/offset']
            f['rows/offset'] = off[:-1]
    err(
        tmp_path / 'short.h5',
        r"array 'flux' has shape \(5, 3400\), expected \(6, 3400\)"
        if layout == 'grid'
        else r"5 rows of 3400 px \(\d+ bytes\) do not match 6 spectra",
    )
    with h5py.File(tmp_path / 'other.h5', 'w') as f:
        f['x'] = 1
    err(tmp_path / 'other.h5', 'not a regridded store')


def test_corrupt_compressed_chunk(tmp_path):
    "A damaged compressed chunk is reported by the read that meets it."
    grid, arrays, meta = sample(6)
    arrays = {'norm_flux': np.random.default_rng(0).normal(size=(6, grid.n)).astype(np.float32)}
    p = write_regridded(tmp_path / 'r.h5', grid, arrays, meta, compression='gzip', layout='grid')
    with h5py.File(p) as f:
        info = f['arrays/norm_flux'].id.get_chunk_info(0)
    b = bytearray(p.read_bytes())
    b[info.byte_offset + 10 : info.byte_offset + 200] = os.urandom(190)
    p.write_bytes(bytes(b))
    with open_regridded(p) as st, pytest.raises(StoreError, match="r.h5: cannot read array 'norm_flux'"):
        st.read([0], ('norm_flux',))
    p = write_regridded(tmp_path / 'c.h5', grid, arrays, meta, precision='noise')  # compact rows: a damaged lz4 frame
    with h5py.File(p) as f:
        at = f['rows/heap'].id.get_offset() + int(f['rows/offset'][2])
    b = bytearray(p.read_bytes())
    b[at : at + 30] = os.urandom(30)
    p.write_bytes(bytes(b))
    with open_regridded(p) as st:
        st.read([0, 1, 3], ('norm_flux',))  # other rows read
        with pytest.raises(StoreError, match=r"c.h5: cannot read rows \(corrupt\?\)"):
            st.read([0, 2], ('norm_flux',))


def test_bad_parquet_stores(tmp_path):
    p = write_native(tmp_path / 'n.parquet', spectra(4))
    raw = p.read_bytes()

    def err(path, match, **kw):
        with pytest.raises(StoreError, match=match) as e:
            read_native(path, **kw)
        assert str(path) in str(e.value)

    err(tmp_path / 'missing.parquet', 'no such file')
    (tmp_path / 'cut.parquet').write_bytes(raw[: len(raw) // 2])
    err(tmp_path / 'cut.parquet', 'truncated or corrupt')
    (tmp_path / 'cut2.parquet').write_bytes(raw[:-3])
    err(tmp_path / 'cut2.parquet', 'truncated or corrupt')
    (tmp_path / 'junk.parquet').write_bytes(os.urandom(3000))
    err(tmp_path / 'junk.parquet', 'truncated or corrupt')
    pq.write_table(pq.read_table(p).drop_columns(['flux']), tmp_path / 'noflux.parquet')
    err(tmp_path / 'noflux.parquet', r"missing columns \['flux'\]")
    b = bytearray(raw)
    b[100 : len(raw) // 2] = os.urandom(len(raw) // 2 - 100)
    (tmp_path / 'garbled.parquet').write_bytes(bytes(b))
    err(tmp_path / 'garbled.parquet', 'corrupt')
    with pytest.raises(StoreError, match='meta_cut.parquet'):
        read_native_meta(tmp_path / 'meta_cut.parquet')


def test_store_stage_notebook(tmp_path):
    "The `store` stage run by papermill merges given shards (and, by default, its own demo)."
    grid, arrays, meta, native = shard_inputs(9)
    write_chunks(tmp_path / 'shards', grid, arrays, meta, native, 4)
    r = subprocess.run(
        [
            sys.executable,
            '-m',
            'papermill',
            '--cwd',
            str(ROOT / 'nbs'),
            '--no-progress-bar',
            str(ROOT / 'nbs' / '06_storage.ipynb'),
            str(tmp_path / 'run.ipynb'),
            '-p',
            'src',
            str(tmp_path / 'shards'),
            '-p',
            'outdir',
            str(tmp_path / 'out'),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    check_merged(tmp_path / 'out', arrays, meta, native)


def test_stored_chunk_runs_checked(tmp_path):
    "The run table stored by the writer is used when it matches HDF5's chunk index, and rebuilt when it does not."
    grid, arrays, meta = sample(10)
    p = write_regridded(tmp_path / 'r.h5', grid, arrays, meta, chunk_px=1000, layout='grid')
    with h5py.File(p, 'a') as f:
        assert sorted(f['runs']) == sorted(arrays)
        off = f['runs/weight/offset']
        off[...] = off[()] + 4  # as if the file had been repacked
    with open_regridded(p) as st:
        for k, v in st.read([9, 2, 2, 0], fields=('weight', 'norm_flux')).items():
            same_bits(v, arrays[k][[9, 2, 2, 0]])


def test_verify_finds_a_flipped_data_byte(tmp_path):
    """Unfiltered chunks carry no checksum: a flipped pixel byte reads back silently, and `verify` (stored sha256 per
    array) reports it."""
    grid, arrays, meta = sample(6)
    p = write_regridded(tmp_path / 'r.h5', grid, arrays, meta, layout='grid')
    with open_regridded(p) as st:
        assert st.verify() == st.fields
    with h5py.File(p) as f:
        at = f['arrays/norm_ivar'].id.get_chunk_info(3).byte_offset + 17
    b = bytearray(p.read_bytes())
    b[at] ^= 0x01
    p.write_bytes(bytes(b))
    with open_regridded(p) as st:
        assert not np.array_equal(st.load(('norm_ivar',))['norm_ivar'], arrays['norm_ivar'])
        assert st.verify(['flux', 'weight']) == ['flux', 'weight']
        with pytest.raises(StoreError, match="array 'norm_ivar' does not match its stored sha256") as e:
            st.verify()
        assert e.value.path == str(p)
    grid, arrays, meta, native = shard_inputs(6)  # the merged store carries its sha256 too
    write_chunks(tmp_path / 'shards', grid, arrays, meta, native, 4)
    merge_shards(tmp_path / 'shards', tmp_path / 'out', progress=False)
    with open_regridded(tmp_path / 'out' / 'regridded.h5') as st:
        assert st.verify() == st.fields
    with h5py.File(tmp_path / 'out' / 'regridded.h5', 'a') as f:
        at = f['rows/heap'].id.get_offset() + int(f['rows/offset'][3]) + 40
    b = bytearray((tmp_path / 'out' / 'regridded.h5').read_bytes())
    b[at] ^= 0x10
    (tmp_path / 'out' / 'regridded.h5').write_bytes(bytes(b))
    with (
        open_regridded(tmp_path / 'out' / 'regridded.h5') as st,
        pytest.raises(StoreError, match='the rows do not match their stored sha256'),
    ):
        st.verify()
    with h5py.File(tmp_path / 'out' / 'regridded.h5', 'a') as f:
        del f['rows'].attrs['sha256']  # a store written without one
    with (
        open_regridded(tmp_path / 'out' / 'regridded.h5') as st,
        pytest.raises(StoreError, match='the rows have no stored sha256'),
    ):
        st.verify()


@pytest.mark.parametrize('umask,mode', [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    "Every file written through the atomic writer gets the mode a plain open() would give it, not mkstemp's 0600."
    from stellar_spectra.atomic import atomic_write

    grid, arrays, meta = demo_sample(4, GRID)
    old = os.umask(umask)
    try:
        files = [
            write_regridded(tmp_path / 'r.h5', grid, arrays, meta),
            atomic_write(tmp_path / 'a.json', '{}'),
            write_shard(tmp_path / 'shards', 'c0', arrays, meta, grid=grid),
        ]
        merge_shards(tmp_path / 'shards', tmp_path / 'store', progress=False)
        files += [tmp_path / 'store' / 'regridded.h5', tmp_path / 'store' / 'store_summary.json']
    finally:
        os.umask(old)
    assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: mode for f in files}


def test_merge_refuses_shards_of_a_failed_guard(tmp_path):
    import json

    grid, arrays, meta = demo_sample(4, GRID)
    write_shard(tmp_path / 'run' / 'shards', 'c0', arrays, meta, grid=grid)
    (tmp_path / 'run' / 'summary.json').write_text(json.dumps({'aligned': True}))
    assert merge_shards(tmp_path / 'run' / 'shards', tmp_path / 'ok', progress=False)['n_spectra'] == 4
    (tmp_path / 'run' / 'summary.json').write_text(
        json.dumps({'aligned': False, 'misaligned': 'ges: stacked lines off by +2.5 px'})
    )
    with pytest.raises(
        StoreError, match=r'summary\.json: the preprocess run failed its alignment guard.*ges: stacked lines off'
    ):
        merge_shards(tmp_path / 'run' / 'shards', tmp_path / 'bad', progress=False)
    assert not (tmp_path / 'bad').exists()


@pytest.fixture(scope='module')
def pipeline_rows(tmp_path_factory):
    "The full-precision arrays the preprocessing makes for a small mock sky (all three surveys), and their table."
    from stellar_spectra.mock.mocksky import generate_mock_sky
    from stellar_spectra.pipeline.crossmatch import crossmatch_surveys
    from stellar_spectra.pipeline.preprocess import work_plan, preprocess_spectrum
    from stellar_spectra.io.readers import read_spectrum

    root = tmp_path_factory.mktemp('sky')
    generate_mock_sky(root, n_stars=8, seed=14, progress=False)
    plan = work_plan(root, crossmatch_surveys(root, root / 'xm.parquet', progress=False)['out'])
    grid, rows, meta = common_grid(), [], []
    for r in plan.itertuples():
        a, m = preprocess_spectrum(read_spectrum(root / r.relpath), grid, rv=r.rv)
        rows.append(a)
        meta.append(dict(m, star=r.star, source=r.relpath))
    assert {m['survey'] for m in meta} == {'apogee', 'galah', 'ges'}
    return grid, {k: np.stack([a[k] for a in rows]) for k in rows[0]}, pd.DataFrame(meta)


def test_compact_rows_within_stated_precision(pipeline_rows, tmp_path):
    """The store stage's precision on real pipeline output: flags and weight exact, fluxes within 0.8% (1%) of sigma,
    ivars within 0.025%; <= 40 KB a spectrum."""
    grid, arrays, meta = pipeline_rows
    p = write_regridded(tmp_path / 'r.h5', grid, arrays, meta, precision='noise')
    with open_regridded(p) as st:
        got = st.load(list(arrays))
        within(got, arrays)
        for k in ('norm_flux', 'flux', 'ivar', 'norm_ivar', 'weight'):
            assert (got[k][arrays['flags'] == 8] == (k == 'norm_flux')).all()  # unobserved: as before
        rows, pix = (
            [3, 0, 3, len(st) - 1],
            np.flatnonzero(arrays['weight'].any(0)),
        )  # pack_store's read: the observed pixels only
        for k, v in st.read(rows, list(arrays), pix=pix).items():
            same_bits(v, got[k][rows][:, pix])
        assert st.verify() == st.fields
    with h5py.File(p) as f:
        per_row = np.diff(f['rows/offset'][()]) + 12  # a row's bytes and its entries in the offset and frame tables
    assert per_row.mean() <= 40e3 and p.stat().st_size - per_row.sum() < 0.5e6, (
        per_row.mean(),
        p.stat().st_size,
    )  # + the grid and table, once
    again = write_regridded(
        tmp_path / 'again.h5', grid, got, meta, precision='noise'
    )  # idempotent: nothing more is lost on a rewrite
    with h5py.File(p) as f, h5py.File(again) as g:
        assert np.array_equal(f['rows/heap'][()], g['rows/heap'][()])


def test_compact_rows_leave_chi2_unchanged(pipeline_rows, tmp_path):
    """The chi2 of a reference model against the stored spectra, through the batches training builds, equals the one
    against full precision to << 1%."""
    import torch
    from stellar_spectra.model.gon_batches import batch_from_store, chi2

    grid, arrays, meta = pipeline_rows
    full, noise = (write_regridded(tmp_path / f'{p}.h5', grid, arrays, meta, precision=p) for p in ('exact', 'noise'))
    nf, ni = arrays['norm_flux'].astype(np.float64), arrays['norm_ivar'].astype(np.float64)
    sigma = np.where(ni > 0, 1 / np.sqrt(np.where(ni > 0, ni, 1)), 0)
    models = {
        'at the noise': nf
        + np.random.default_rng(0).normal(size=nf.shape) * sigma,  # chi2 / pixel ~ 1: the rounding matters most
        'smoothed': np.stack([np.convolve(f, np.ones(7) / 7, 'same') for f in nf]),
    }  # misses the lines: chi2 / pixel >> 1

    def chi2_of(path, model):
        with open_regridded(path) as st:
            b = batch_from_store(st, np.arange(len(st)))
        px = np.clip(
            np.rint((b.lnlam.numpy() - grid.ln_lam0) / grid.dln).astype(int), 0, grid.n - 1
        )  # the grid pixel of each batch pixel (padding: weight 0)
        return chi2(torch.as_tensor(np.take_along_axis(model, px, 1), dtype=torch.float64), b).numpy(), b.weight.sum(
            1
        ).numpy()

    for name, model in models.items():
        (c0, n0), (c1, n1) = chi2_of(full, model), chi2_of(noise, model)
        assert np.array_equal(n0, n1)  # the same pixels
        if name == 'at the noise':
            assert 0.9 < (c0 / n0).mean() < 1.1
        assert np.abs(c1 / c0 - 1).max() < 1e-3 and abs(c1.sum() / c0.sum() - 1) < 1e-4, (
            name,
            np.abs(c1 / c0 - 1).max(),
            c1.sum() / c0.sum() - 1,
        )


def test_noise_precision_keeps_odd_values(tmp_path):
    """NaN, infinities, extreme flags, int16 arrays: kept exactly by the noise-precision rows too; the rest within the
    stated precision."""
    grid, arrays, meta = sample(12)
    p = write_regridded(tmp_path / 'r.h5', grid, arrays, meta, precision='noise')
    with open_regridded(p) as st:
        got = st.load(list(arrays))
        within({k: v for k, v in got.items()}, arrays)
        same_bits(got['norm_flux'][0, :3], arrays['norm_flux'][0, :3])
        same_bits(got['extra'], arrays['extra'])
        assert 'noise' in repr(st) and st.codec.has('sigma')


def test_merge_copies_the_shards_rows(tmp_path):
    """The merge copies each row's bytes: the merged store holds what `write_regridded(precision='noise')` writes for
    the same spectra."""
    grid, arrays, meta, native = shard_inputs(10)
    write_chunks(tmp_path / 'shards', grid, arrays, meta, native, 3)
    merge_shards(tmp_path / 'shards', tmp_path / 'out', progress=False)
    order = meta.sort_values(list(SPEC_ORDER), kind='stable').index.to_numpy()
    ref = write_regridded(
        tmp_path / 'ref.h5', grid, {k: v[order] for k, v in arrays.items()}, meta.loc[order], precision='noise'
    )
    with h5py.File(tmp_path / 'out' / 'regridded.h5') as f, h5py.File(ref) as g:
        for k in ('heap', 'offset', 'frame'):
            assert np.array_equal(f[f'rows/{k}'][()], g[f'rows/{k}'][()]), k
    s = json.loads((tmp_path / 'out' / 'store_summary.json').read_text())
    assert s['regridded_bytes_per_spectrum'] == round(s['files']['regridded.h5'] / 10)


def test_reads_fill_every_pixel(tmp_path):
    """Unobserved pixels read back as their fill even where the output's memory held something else just before (freed
    NaN rows)."""
    grid, arrays, meta = sample(6)
    p = write_regridded(tmp_path / 'r.h5', grid, arrays, meta, precision='noise')
    with open_regridded(p) as st:
        for i in range(6):
            junk = [np.full(grid.n, np.nan, np.float32) for _ in range(16)]
            del junk
            got = st.read(
                [i], ('norm_ivar', 'weight', 'flux', 'norm_flux'), pix=None if i % 2 else np.arange(0, grid.n, 3)
            )
            cols = slice(None) if i % 2 else slice(0, None, 3)
            for k, v in got.items():
                out = arrays['flags'][i, cols] == 8  # NO_DATA: the fill (and row 0's odd values), exactly
                same_bits(v[0][out], arrays[k][i, cols][out])
