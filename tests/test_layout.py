"""One home for each concept (issue #17): the package's layering, read from its sources.

- product code (every module outside `stellar_spectra.mock`) never imports the mock sky;
- no module re-exports another's names (nbdev's `_all_`), and none imports another module's `_private` names;
- every notebook exports where its series says: the mock sky's notebooks (m*) into `stellar_spectra.mock`.
"""

import ast, json
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'stellar_spectra'
MODULES = {
    '.'.join(p.relative_to(PKG).with_suffix('').parts): p
    for p in PKG.rglob('*.py')
    if p.stem not in ('__init__', '_modidx')
}


def imports(name):
    "(module imported, names) of every `from ... import` in module `name`, resolved to dotted names under the package."
    out = []
    for n in ast.walk(ast.parse(MODULES[name].read_text())):
        if not isinstance(n, ast.ImportFrom):
            continue
        if n.level:
            base = name.split('.')[: -n.level]
        elif (n.module or '').split('.')[0] == 'stellar_spectra':
            base = []
        else:
            continue
        mod = '.'.join([*base, *[x for x in (n.module or '').removeprefix('stellar_spectra').split('.') if x]])
        out.append((mod, [a.name for a in n.names]))
    return out


def test_modules_found():
    assert {'io.readers', 'pipeline.preprocess', 'model.gon', 'evaluation.results', 'mock.mocksky', 'formats'} <= set(
        MODULES
    )


@pytest.mark.parametrize('name', sorted(m for m in MODULES if not m.startswith('mock.')))
def test_product_code_never_imports_the_mock_sky(name):
    bad = [
        (mod, names)
        for mod, names in imports(name)
        if mod == 'mock' or mod.startswith('mock.') or (mod == '' and any(x == 'mock' for x in names))
    ]
    assert not bad, f'stellar_spectra.{name} imports the mock sky: {bad}'


@pytest.mark.parametrize('name', sorted(MODULES))
def test_no_reexports_and_no_private_names_across_modules(name):
    tree = ast.parse(MODULES[name].read_text())
    shim = [
        n.lineno
        for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, 'id', '') == '_all_' for t in n.targets)
    ]
    assert not shim, (
        f'stellar_spectra.{name} re-exports names (_all_, line {shim}): import them from their home instead'
    )
    private = [(mod, x) for mod, names in imports(name) for x in names if x.startswith('_') and not x.startswith('__')]
    assert not private, f'stellar_spectra.{name} imports private names of other modules: {private} (promote them)'


def test_notebooks_export_into_their_series():
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        cells = json.loads(nb.read_text())['cells']
        exp = next(
            (''.join(c['source']).split()[-1] for c in cells if ''.join(c['source']).startswith('#| default_exp')), None
        )
        if exp is None:
            continue
        assert exp in MODULES, f'{nb.name} exports {exp}, which is not a module of the package'
        assert nb.name.startswith('m') == exp.startswith('mock.'), (
            f'{nb.name} exports {exp}: the mock sky series (m*) and only it exports into mock'
        )
