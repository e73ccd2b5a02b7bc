"""Build the docs site (docs/site/) and README.md from the notebooks, without Quarto.

Each notebook is executed with papermill from nbs/ (its tiny defaults), processed with nbdev's
processors (show_doc for exported names, `#| hide` cells and directives removed), converted to
Markdown with its figures by nbconvert, its LaTeX turned into MathML (latex2mathml; browsers render
MathML without scripts, so the site stays offline), and the pages are rendered by mkdocs with an
offline theme.
Usage: python docs/build.py [--only NAME ...] [--readme] [--workers N]"""
import argparse, json, re, shutil, subprocess, sys, tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS, PROC, SITE = ROOT/'nbs', ROOT/'docs'/'_proc_site', ROOT/'docs'/'site'

def notebooks(only=None):
    "Notebooks in site order: index first, then 00_.., 09_.., then a0_.. (mock sky), then the rest."
    nbs = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith('_'))
    nbs = sorted(nbs, key=lambda p: (p.stem != 'index', not p.stem[:1].isdigit(), p.stem))
    return [p for p in nbs if not only or p.stem in only]

def execute(nb, outdir):
    "Run `nb` with papermill from nbs/ into `outdir`; returns the executed copy."
    dst = outdir/nb.name
    r = subprocess.run([Path(sys.executable).parent/'papermill', '--cwd', NBS, '--no-progress-bar',
                        '--log-level', 'WARNING', nb, dst], capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f'{nb.name} failed to execute:\n{r.stderr[-3000:]}')
    return dst

_dir = re.compile(r'^\s*#\|\s*([\w-]+):?\s*(.*)$')

def _directives(src):
    return {m.group(1): m.group(2).strip() for l in src.splitlines() if (m := _dir.match(l))}

def _default_exp(nb):
    for c in nb.cells:
        if c.cell_type == 'code' and (m := re.search(r'^\s*#\|\s*default_exp\s+(\S+)', c.source, re.M)): return m.group(1)

def _show_doc_md(mod, src):
    "Markdown of nbdev's show_doc for the name in `show_doc(NAME)`, looked up in stellar_spectra.`mod`; None if not found."
    import importlib
    from nbdev.showdoc import show_doc
    name = re.match(r'\s*show_doc\((.+)\)\s*$', src).group(1).strip()
    try:
        obj = importlib.import_module(f'stellar_spectra.{mod}')
        for part in name.split('.'): obj = getattr(obj, part)
        return show_doc(obj, name=name)._repr_markdown_()
    except Exception: return None

def process(nb_path, run_showdoc=True):
    "Apply nbdev's processors, then drop hidden cells, stderr noise and directive lines; returns a notebook."
    import nbformat
    from execnb.nbio import read_nb, nb2dict
    from nbdev.processors import NBProcessor, add_show_docs, exec_show_docs, populate_language, strip_ansi, hide_line, rm_header_dash, clean_magics
    nb = read_nb(nb_path)
    NBProcessor(nb=nb, procs=[populate_language, add_show_docs, strip_ansi, hide_line, rm_header_dash]).process()
    mod = _default_exp(nb)
    cells = []
    for c in nb.cells:
        src = c.get('source') or ''
        d = {**_directives(src), **{k.rstrip(':'): ' '.join(v) for k, v in (c.get('directives_') or {}).items()}} if c.cell_type == 'code' else {}
        if {'hide', 'default_exp'} & d.keys() or d.get('include') == 'false': continue
        c.source = '\n'.join(l for l in src.splitlines() if not _dir.match(l)).strip()
        if c.cell_type == 'code':
            outs = [o for o in c.get('outputs', []) if not (o.get('output_type') == 'stream' and o.get('name') == 'stderr')]
            c.outputs = [] if d.get('output') == 'false' else outs
            if 'export' in d or 'exports' in d:  # exported code: folded under its show_doc
                cells.append(nbformat.v4.new_markdown_cell(f'<details markdown="1"><summary>Exported source</summary>\n\n```python\n{c.source}\n```\n\n</details>'))
                continue
            if src.lstrip().startswith('show_doc('):  # show the rendered doc, not the call
                md = [o for o in c.outputs if 'text/markdown' in o.get('data', {})]
                md = ''.join(md[0]['data']['text/markdown']) if md else (_show_doc_md(mod, src) if run_showdoc else None)
                if md: cells.append(nbformat.v4.new_markdown_cell(md))
                continue
        if c.source or c.get('outputs'): cells.append(c)
    nb.cells = cells
    d = nb2dict(nb)
    for c in d['cells']: c.pop('idx_', None); c.pop('has_sd', None); c.pop('directives_', None)
    return nbformat.reads(json.dumps(d), as_version=4)  # reads joins the split lines

_code = re.compile(r'(```.*?```|`[^`\n]*`|<details.*?</details>)', re.S)  # left alone: fenced and inline code, folded sources
_math = re.compile(r'\$\$(.+?)\$\$|(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])', re.S)

def math_to_mathml(md:str) -> str:
    "Replace $...$ and $$...$$ outside code with MathML (rendered by the browser itself, no script, no network)."
    from latex2mathml.converter import convert
    def one(m):
        tex, block = (m.group(1), True) if m.group(1) is not None else (m.group(2), False)
        try: return convert(tex.strip(), display='block' if block else 'inline')
        except Exception: return m.group(0)  # leave what the converter cannot parse as it was written
    return ''.join(part if i % 2 else _math.sub(one, part) for i, part in enumerate(_code.split(md)))

def to_markdown(nb, name, outdir):
    "Write `name`.md and its figures (`name`_files/*.png) into `outdir`; returns the page title."
    from nbconvert import MarkdownExporter
    body, res = MarkdownExporter().from_notebook_node(nb, resources={'output_files_dir': f'{name}_files'})
    for fn, data in res.get('outputs', {}).items():
        (outdir/fn).parent.mkdir(parents=True, exist_ok=True); (outdir/fn).write_bytes(data)
    body = re.sub(r'^# # ', '# ', body, flags=re.M)  # titles written as '# # Title'
    body = re.sub(r'\[source\]\(https?://[^)]*\)(\{[^}]*\})?', '', body)  # show_doc links to a repository host
    body = math_to_mathml(body)
    (outdir/f'{name}.md').write_text(body)
    m = re.search(r'^# (.+)$', body, re.M)
    return m.group(1).strip() if m else name

def readme(dst=ROOT/'README.md'):
    "README.md from nbs/index.ipynb: markdown cells as they are, visible code cells as Python blocks (without their outputs)."
    nb = process(NBS/'index.ipynb', run_showdoc=False)
    text = '\n\n'.join(c.source if c.cell_type == 'markdown' else f'```python\n{c.source}\n```' for c in nb.cells if c.source)
    Path(dst).write_text('<!-- generated from nbs/index.ipynb by `make readme`: edit the notebook -->\n\n' + text + '\n')

MKDOCS = """site_name: stellar_spectra
docs_dir: docs
site_dir: {site}
use_directory_urls: false
theme:
  name: mkdocs
  highlightjs: false
  navigation_depth: 2
markdown_extensions:
  - tables
  - fenced_code
  - md_in_html
  - codehilite:
      guess_lang: false
  - toc:
      permalink: true
extra_css: [pygments.css]
plugins: []
nav:
{nav}
"""

def build(only=None, workers=2, site=SITE, proc=PROC):
    "Execute, process and render the notebooks into docs/site/."
    site, proc = Path(site), Path(proc)
    shutil.rmtree(proc, ignore_errors=True); (proc/'docs').mkdir(parents=True)
    nbs = notebooks(only)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as ex:
        executed = list(ex.map(lambda nb: execute(nb, Path(tmp)), nbs))
        titles = [to_markdown(process(e), e.stem, proc/'docs') for e in executed]
    from pygments.formatters import HtmlFormatter
    (proc/'docs'/'pygments.css').write_text(HtmlFormatter().get_style_defs('.codehilite'))
    nav = '\n'.join(f'  - "{("Home" if p.stem == "index" else t)}": {p.stem}.md' for p, t in zip(nbs, titles))
    (proc/'mkdocs.yml').write_text(MKDOCS.format(site=site, nav=nav))
    subprocess.run([Path(sys.executable).parent/'mkdocs', 'build', '-q', '-f', proc/'mkdocs.yml'], check=True)
    print(f'docs site: {site}/index.html ({len(nbs)} pages)')

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--only', nargs='*', help='notebook names (stems) to include')
    ap.add_argument('--readme', action='store_true', help='only regenerate README.md from nbs/index.ipynb')
    ap.add_argument('--workers', type=int, default=2)
    a = ap.parse_args()
    readme() if a.readme else build(a.only, a.workers)
