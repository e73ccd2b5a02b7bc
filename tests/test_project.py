"""The project as a user meets it: the console command, the DVC pipeline (repro, no-op repro, push/pull
round trip into a fresh clone) and the stage dependencies declared in dvc.yaml."""

import ast, hashlib, json, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, 'PATH': f'{BIN}{os.pathsep}{os.environ.get("PATH", "")}'}


def sh(*args, cwd=ROOT, check=True):
    "Run a command, return stdout+stderr; fail the test with its output on a non-zero exit."
    r = subprocess.run(list(map(str, args)), cwd=cwd, env=ENV, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and r.returncode:
        pytest.fail(f'{args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}')
    return r.stdout + r.stderr


def test_cli_help():
    out = sh(BIN / 'stellar-spectra', '--help')
    assert 'mocksky' in out and 'summary' in out
    out = sh(BIN / 'stellar-spectra', 'mocksky', '--help')
    assert '--n-stars' in out and '--seed' in out and 'outdir' in out


def _module_imports(path):
    "stellar_spectra modules imported by a .py file or a notebook's code cells."
    if path.suffix == '.ipynb':
        import json

        src = '\n'.join(''.join(c['source']) for c in json.loads(path.read_text())['cells'] if c['cell_type'] == 'code')
        src = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!')))
    else:
        src = path.read_text()
    mods = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                mods.add(node.module or '__init__')  # from . import x / from .x import y
            elif node.module and node.module.startswith('stellar_spectra'):
                mods.add(node.module.split('.')[1] if '.' in node.module else '__init__')
        elif isinstance(node, ast.Import):
            mods |= {a.name.split('.')[1] for a in node.names if a.name.startswith('stellar_spectra.')}
    return {m.split('.')[0] for m in mods}


def test_stage_deps_cover_imports():
    "Each stage's deps name every package module its notebook imports, directly or through other modules."
    stages = yaml.safe_load((ROOT / 'dvc.yaml').read_text())['stages']
    for name, st in stages.items():
        nb = next(Path(ROOT / d) for d in st['deps'] if d.endswith('.ipynb'))
        todo, seen = _module_imports(nb), set()
        while todo:
            m = todo.pop()
            seen.add(m)
            f = ROOT / 'stellar_spectra' / f'{m}.py'
            if f.exists():
                todo |= _module_imports(f) - seen
        need = {f'stellar_spectra/{m}.py' for m in seen if (ROOT / 'stellar_spectra' / f'{m}.py').exists()}
        assert need <= set(st['deps']), f'stage {name} misses deps {need - set(st["deps"])}'


def _hashes(d):
    return {
        str(p.relative_to(d)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(Path(d).rglob('*'))
        if p.is_file()
    }


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    "A git repository holding the project's current files (tracked and new), with tiny parameters."
    base = tmp_path_factory.mktemp('dvc')
    src = base / 'stellar_spectra'
    files = sh('git', 'ls-files', '-co', '--exclude-standard').split('\n')
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    params = yaml.safe_load((src / 'params.yaml').read_text())
    params['mocksky'].update(n_stars=4, n_workers=1)
    params['preprocess'].update(n_workers=1)
    (src / 'params.yaml').write_text(yaml.safe_dump(params))
    (src / 'dvc.lock').unlink(missing_ok=True)
    for a in (
        ['init', '-q'],
        ['add', '-A'],
        ['-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'snapshot'],
    ):
        sh('git', *a, cwd=src)
    return src


def test_dvc_repro_push_pull(project):
    dvc = BIN / 'dvc'
    out = sh(dvc, 'repro', cwd=project)
    for stage in ('mocksky', 'download', 'crossmatch', 'preprocess', 'store'):
        assert f"Running stage '{stage}'" in out
    assert (project / 'data' / 'crossmatch' / 'common_stars.parquet').exists()
    assert (project / 'data' / 'store' / 'regridded.h5').exists() and (
        project / 'data' / 'preprocess' / 'alignment.csv'
    ).exists()
    sky = project / 'data' / 'mock_sky'
    assert (sky / 'truth' / 'stars.parquet').exists() and (project / 'papermill_runs' / 'm0_mocksky.ipynb').exists()
    lock = json.loads(
        (project / 'data' / 'archive' / 'download.lock.json').read_text()
    )  # the later stages read the fetched copy
    assert lock['files'] and all(
        (project / 'data' / 'archive' / p).read_bytes() == (sky / p).read_bytes() for p in lock['files']
    )
    assert all(r['status'] == 404 and not (sky / p).exists() for p, r in lock['failed'].items())
    out = sh(dvc, 'repro', cwd=project)  # nothing changed: nothing runs
    assert 'Running stage' not in out and ('up to date' in out or "didn't change" in out)
    out = sh(BIN / 'stellar-spectra', 'summary', cwd=project)
    assert 'mock_sky' in out and 'truth' in out
    assert (
        'fetched and verified' in out
        and 'spectra processed / planned' in out
        and 'alignment guard' in out
        and 'stored spectra' in out
        and 'regridded.h5' in out
    )
    sh(dvc, 'push', cwd=project)
    assert (project.parent / 'stellar_spectra_dvc_remote').is_dir()  # the default remote sits beside the clone
    sh('git', 'add', '-A', cwd=project)
    sh('git', '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'run', cwd=project)
    clone = project.parent / 'clone'
    sh('git', 'clone', '-q', project, clone, cwd=project.parent)
    assert not (clone / 'data' / 'mock_sky').exists()
    sh(dvc, 'pull', cwd=clone)
    for out in ('mock_sky', 'archive', 'crossmatch', 'preprocess', 'store'):
        assert _hashes(clone / 'data' / out) == _hashes(project / 'data' / out), out
    assert 'Running stage' not in sh(dvc, 'repro', cwd=clone)  # the pulled outputs are current


def test_dvc_config():
    cfg = (ROOT / '.dvc' / 'config').read_text()
    assert re.search(r'analytics\s*=\s*false', cfg) and re.search(r'remote\s*=\s*\w+', cfg)


def test_readme_from_index(tmp_path):
    "README.md is generated from nbs/index.ipynb and shows `make run` and `make test` first."
    sys.path.insert(0, str(ROOT / 'docs'))
    import build

    build.readme(tmp_path / 'README.md')
    assert (tmp_path / 'README.md').read_text() == (ROOT / 'README.md').read_text(), (
        'README.md is stale: run `make readme`'
    )
    cmds = re.findall(r'^make \w+', (ROOT / 'README.md').read_text(), re.M)
    assert cmds[:2] == ['make run', 'make test']
