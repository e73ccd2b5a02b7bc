"""Bad input, as a user meets it: every command answers with exit code 2 and one line `error: <file>: <problem>`,
and leaves nothing half-written behind (issue #16)."""

import json, os, shutil, sys
from pathlib import Path
import pytest
from stellar_spectra.cli import main
from stellar_spectra.io.manifest import Entry, write_manifest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / 'stellar-spectra'
APSTAR = 'sdss/dr17/apogee/spectro/redux/dr17/stars/apo25m/120+12/apStar-dr17-2M00000001+0000000.fits'


def files(d):
    return {p.relative_to(d) for p in Path(d).rglob('*')}


def run(capsys, tmp, *argv):
    "(exit code, stderr, paths that appeared under `tmp`) of `stellar-spectra *argv` run in-process."
    before = files(tmp)
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err, files(tmp) - before


def one_error(err, name):
    "The stderr of a failed command is one line naming the file."
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ': error: ' in lines[0] and name in lines[0] and 'Traceback' not in err, err
    return lines[0]


@pytest.fixture
def corpus(tmp_path):
    "Bad files: empty, text named .fits, truncated FITS, a directory, a product that is not a spectrum."
    (tmp_path / 'empty.fits').write_bytes(b'')
    (tmp_path / 'text.fits').write_text('SIMPLE? no, a note saved with the wrong name\n')
    hdr = b''.join(
        f'{c:<80}'.encode()
        for c in (
            'SIMPLE  =                    T',
            'BITPIX  =                  -32',
            'NAXIS   =                    1',
            'NAXIS1  =                 8575',
            'END',
        )
    )
    (tmp_path / 'truncated.fits').write_bytes(hdr.ljust(2880) + b'\0' * 1000)  # the data stop 1000 bytes into 34300
    (tmp_path / 'folder.fits').mkdir()
    from astropy.table import Table

    Table(dict(APOGEE_ID=['2M00000001+0000000'], TELESCOPE=['apo25m'], FIELD=['120+12'])).write(
        tmp_path / 'allStar-dr17-synspec_rev1.fits'
    )
    return tmp_path


@pytest.mark.parametrize(
    'name',
    ['empty.fits', 'text.fits', 'truncated.fits', 'folder.fits', 'missing.fits', 'allStar-dr17-synspec_rev1.fits'],
)
def test_read_bad_file(capsys, corpus, name):
    code, err, new = run(capsys, corpus, 'read', corpus / name)
    assert code == 2 and not new
    one_error(err, name)


def test_read_directory_says_so(capsys, corpus):
    """A folder given where a file belongs: the one line says it is a directory (not 'no such file', which sends the
    user looking for a typo)."""
    code, err, new = run(capsys, corpus, 'read', corpus / 'folder.fits')
    assert code == 2 and not new
    assert one_error(err, 'folder.fits').endswith('folder.fits: is a directory, not a file'), err


def test_read_no_permission(capsys, corpus, monkeypatch):
    "A file the user may not read. As root chmod 000 stops nothing, so there the refusal is the one `open` would give."
    f = corpus / 'secret.fits'
    shutil.copy(corpus / 'truncated.fits', f)
    f.chmod(0)
    if os.geteuid() == 0:
        import builtins

        real = builtins.open

        def deny(file, *a, **k):
            if str(file) == str(f):
                raise PermissionError(13, 'Permission denied', str(file))
            return real(file, *a, **k)

        monkeypatch.setattr(builtins, 'open', deny)
    code, err, new = run(capsys, corpus, 'read', f)
    assert code == 2 and not new
    assert 'Permission denied' in one_error(err, 'secret.fits')


def manifest_text(*rows):
    return ''.join(json.dumps(r) + '\n' for r in rows)


@pytest.mark.parametrize(
    'rows, says',
    [
        ([dict(path='a.fits', sha256='xyz')], 'row 1: a.fits: sha256'),
        ([dict(path='a.fits', url='ftp://x/a.fits')], 'row 1: a.fits: url'),
        (
            [dict(path='a.fits', url='https://x/a'), dict(path='a.fits', url='https://y/a')],
            'row 2: a.fits is already in row 1',
        ),
        ([dict(path='../a.fits')], 'row 1: bad manifest path'),
        ([dict(path='a.fits', size=-3)], 'row 1: a.fits: negative size'),
        (['not an object'], 'row 1: not a JSON object'),
    ],
)
def test_download_bad_manifest(capsys, tmp_path, rows, says):
    (tmp_path / 'm.jsonl').write_text(manifest_text(*rows))
    code, err, new = run(capsys, tmp_path, 'download', tmp_path / 'm.jsonl', tmp_path / 'out', '--no-progress')
    assert code == 2 and not new, (err, new)  # the destination is not even made
    assert says in one_error(err, 'm.jsonl')


def test_download_bad_values(capsys, tmp_path):
    write_manifest([Entry('a.fits')], tmp_path / 'm.jsonl')
    for opt in (['--n-workers', '0'], ['--timeout', 'nan'], ['--retries', '-1'], ['--base-url', 'ftp://mirror/']):
        code, err, new = run(capsys, tmp_path, 'download', tmp_path / 'm.jsonl', tmp_path / 'out', *opt)
        assert code == 2 and not new, (opt, err)
        assert opt[0][2:].replace('-', '_') in err.replace('-', '_') or 'base_url' in err, err


def test_download_failures_exit_nonzero(capsys, tmp_path):
    "A file the mirror lacks: exit 1 and a summary line; with --missing-ok a 404 is accepted; a bad checksum never is."
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    (mirror / 'a.fits').write_bytes(b'a' * 100)
    write_manifest([Entry('a.fits'), Entry('b.fits')], tmp_path / 'm.jsonl')
    args = ['download', tmp_path / 'm.jsonl', tmp_path / 'out', '--base-url', mirror, '--no-progress']
    code, err, new = run(capsys, tmp_path, *args)
    assert code == 1 and '1 of 2 files failed (HTTP 404: 1)' in one_error(err, 'download.lock.json')
    assert not [p for p in new if '.part' in p.name]
    assert run(capsys, tmp_path, *args, '--missing-ok')[0] == 0
    write_manifest([Entry('a.fits', sha256='0' * 64)], tmp_path / 'm.jsonl')
    code, err, _ = run(capsys, tmp_path, *args, '--missing-ok', '--retries', '0')
    assert code == 1 and 'sha256' not in err and '1 of 1 files failed (other: 1)' in err
    assert (
        not (tmp_path / 'out' / 'a.fits').exists() or (tmp_path / 'out' / 'a.fits').read_bytes() == b'a' * 100
    )  # the bad copy is not kept as good


def test_download_only_crossmatched_stars(capsys, tmp_path):
    import pandas as pd

    mirror = tmp_path / 'mirror'
    for i in range(3):
        (mirror / f'apStar-dr17-2M0000000{i}+0000000.fits').parent.mkdir(exist_ok=True)
        (mirror / f'apStar-dr17-2M0000000{i}+0000000.fits').write_bytes(b'x' * 10)
    write_manifest([Entry(f'apStar-dr17-2M0000000{i}+0000000.fits', size=10) for i in range(3)], tmp_path / 'm.jsonl')
    pd.DataFrame(dict(apogee_id=['2M00000002+0000000'])).to_parquet(tmp_path / 'common_stars.parquet')
    code, _, new = run(
        capsys,
        tmp_path,
        'download',
        tmp_path / 'm.jsonl',
        tmp_path / 'out',
        '--base-url',
        mirror,
        '--stars',
        tmp_path / 'common_stars.parquet',
    )
    assert (
        code == 0
        and Path('out/apStar-dr17-2M00000002+0000000.fits') in new
        and Path('out/apStar-dr17-2M00000001+0000000.fits') not in new
    )


def test_download_says_what_it_will_fetch(capsys, tmp_path):
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    (mirror / 'a.fits').write_bytes(b'a' * 2**20)
    write_manifest([Entry('a.fits', size=2**20)], tmp_path / 'm.jsonl')
    try:
        main(['download', str(tmp_path / 'm.jsonl'), str(tmp_path / 'out'), '--base-url', str(mirror)])
    except SystemExit as e:
        assert not e.code
    assert 'download: 1 files to fetch, 1.0 MiB' in capsys.readouterr().out


@pytest.mark.parametrize(
    'opt', [['--n-stars', '-5'], ['--n-workers', '0'], ['--crowded-fraction', 'nan'], ['--fast-fraction', '1.5']]
)
def test_mocksky_bad_values(capsys, tmp_path, opt):
    code, err, new = run(capsys, tmp_path, 'mocksky', '--outdir', tmp_path / 'sky', '--no-progress', *opt)
    assert code == 2 and not new, err
    assert opt[0][2:].replace('-', '_') in err.replace('-', '_')


@pytest.mark.parametrize('opt', [['--radius-arcsec', '-1'], ['--epoch', 'nan'], ['--epoch', '1e9'], ['--workers', '0']])
def test_crossmatch_bad_values(capsys, tmp_path, opt):
    code, err, new = run(
        capsys, tmp_path, 'crossmatch', '--out', tmp_path / 'xm' / 'common.parquet', '--no-progress', *opt
    )
    assert code == 2 and not new, err
    assert opt[0][2:].replace('-', '_') in err.replace('-', '_')


@pytest.mark.parametrize('name', ['empty.fits', 'text.fits', 'truncated.fits', 'folder.fits', 'missing.fits'])
def test_crossmatch_bad_catalogue(capsys, corpus, name):
    code, err, new = run(
        capsys,
        corpus,
        'crossmatch',
        '--apogee',
        corpus / name,
        '--galah',
        corpus / name,
        '--ges',
        corpus / name,
        '--out',
        corpus / 'xm' / 'common.parquet',
        '--no-progress',
    )
    assert code == 2 and not new, (err, new)
    line = one_error(err, name)
    if name == 'folder.fits':
        assert line.endswith('folder.fits: is a directory, not a catalogue file'), line


def test_preprocess_bad_input(capsys, corpus):
    code, err, new = run(
        capsys, corpus, 'preprocess', corpus, corpus / 'missing.parquet', corpus / 'pre', '--no-progress'
    )
    assert code == 2 and not new
    one_error(err, 'missing.parquet')
    code, err, _ = run(
        capsys, corpus, 'preprocess', corpus, corpus / 'text.fits', corpus / 'pre', '--method', 'magic', '--no-progress'
    )
    assert code == 2 and 'magic' in err and 'Traceback' not in err
    from stellar_spectra.pipeline.continuum import METHODS

    assert f"choose from {', '.join(map(repr, METHODS))}" in err, err  # argparse offers the one list of methods
    for bad in ('R=ten', 'wmin=5000,wmax=4000'):  # the grid is checked before anything is read or written
        code, err, new = run(
            capsys, corpus, 'preprocess', corpus, corpus / 'text.fits', corpus / 'pre', '--grid', bad, '--no-progress'
        )
        assert code == 2 and 'grid' in err and 'Traceback' not in err and not new, err


def test_store_and_train_bad_input(capsys, corpus):
    code, err, new = run(capsys, corpus, 'store', corpus / 'folder.fits', corpus / 'store', '--no-progress')
    assert code == 2 and not new
    one_error(err, 'folder.fits')
    code, err, new = run(
        capsys,
        corpus,
        'train',
        '--store',
        corpus / 'text.fits',
        '--outdir',
        corpus / 'model',
        '--steps',
        '1',
        '--no-progress',
    )
    assert code == 2 and not new, (err, new)
    one_error(err, 'text.fits')
    code, err, new = run(capsys, corpus, 'train', '--store', corpus / 'text.fits', '--device', 'gpu', '--no-progress')
    assert code == 2 and not new and "device must be 'auto', 'cpu', 'cuda'" in err, err  # before the store is read


def test_version_and_debug(capsys, corpus):
    assert run(capsys, corpus, '--version')[0] == 0
    with pytest.raises(ValueError, match='not a FITS file'):
        main(['read', str(corpus / 'text.fits'), '--debug'])


@pytest.mark.parametrize(
    'text, says',
    [
        ('train:\n  lr: [1\n', 'not a YAML file (line 3'),
        ('- train\n', 'not a params file'),
        ('train:\n  learning_rate: 0.1\n', "unknown train options ['learning_rate']"),
        ('train:\n  decoder: relu\n', "train: decoder must be one of ['siren', 'fourier'], not 'relu'"),
    ],
)
def test_train_bad_params(capsys, corpus, text, says):
    "A params file that does not parse, or a section with an unknown option or choice: one line, exit 2, nothing made."
    (corpus / 'params.yaml').write_text(text)
    argv = ['train', '--store', corpus / 'text.fits', '--outdir', corpus / 'model', '--params', corpus / 'params.yaml']
    code, err, new = run(capsys, corpus, *argv, '--no-progress')
    assert code == 2 and not new, (err, new)
    assert says in one_error(err, 'params.yaml'), err
