"""Build the docs site (docs/site/) and README.md from the notebooks, without Quarto.

Each notebook is executed with papermill from nbs/ (its tiny defaults), processed with nbdev's
processors (show_doc for exported names, `#| hide` cells and directives removed), converted to
Markdown with its figures by nbconvert, its LaTeX turned into MathML (latex2mathml; browsers render
MathML without scripts, so the site stays offline), and the pages are rendered by mkdocs with an
offline theme.
The methodology PDF (docs/site/methodology.pdf) is the built pages printed by headless Chromium in
site order, after a cover with the contents, merged by pypdf with one bookmark per notebook, then
checked page by page (check_pdf).
Usage: python docs/build.py [--only NAME ...] [--readme] [--workers N] [--pdf PATH | --no-pdf]"""

import argparse, datetime, html, json, re, shutil, subprocess, sys, tempfile, unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS, PROC, SITE = ROOT / 'nbs', ROOT / 'docs' / '_proc_site', ROOT / 'docs' / 'site'
PDF_NAME = 'methodology.pdf'  # written into the site folder unless --pdf says otherwise


def notebooks(only=None):
    "Notebooks in site order: index first, then 00_.., 09_.., then a0_.. (mock sky), then the rest."
    nbs = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith('_'))
    nbs = sorted(nbs, key=lambda p: (p.stem != 'index', not p.stem[:1].isdigit(), p.stem))
    return [p for p in nbs if not only or p.stem in only]


def execute(nb, outdir):
    "Run `nb` with papermill from nbs/ into `outdir`; returns the executed copy."
    dst = outdir / nb.name
    r = subprocess.run(
        [
            Path(sys.executable).parent / 'papermill',
            '--cwd',
            NBS,
            '--no-progress-bar',
            '--log-level',
            'WARNING',
            nb,
            dst,
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        raise RuntimeError(f'{nb.name} failed to execute:\n{r.stderr[-3000:]}')
    return dst


_dir = re.compile(r'^\s*#\|\s*([\w-]+):?\s*(.*)$')


def _directives(src):
    return {m.group(1): m.group(2).strip() for l in src.splitlines() if (m := _dir.match(l))}


def _default_exp(nb):
    for c in nb.cells:
        if c.cell_type == 'code' and (m := re.search(r'^\s*#\|\s*default_exp\s+(\S+)', c.source, re.M)):
            return m.group(1)


def _show_doc_md(mod, src):
    """Markdown of nbdev's show_doc for the name in `show_doc(NAME)`, looked up in stellar_spectra.`mod`; None if not
    found."""
    import importlib
    from nbdev.showdoc import show_doc

    name = re.match(r'\s*show_doc\((.+)\)\s*$', src).group(1).strip()
    try:
        obj = importlib.import_module(f'stellar_spectra.{mod}')
        for part in name.split('.'):
            obj = getattr(obj, part)
        return show_doc(obj, name=name)._repr_markdown_()
    except Exception:
        return None


def process(nb_path, run_showdoc=True):
    "Apply nbdev's processors, then drop hidden cells, stderr noise and directive lines; returns a notebook."
    import nbformat
    from execnb.nbio import read_nb, nb2dict
    from nbdev.processors import (
        NBProcessor,
        add_show_docs,
        populate_language,
        strip_ansi,
        hide_line,
        rm_header_dash,
    )

    nb = read_nb(nb_path)
    NBProcessor(nb=nb, procs=[populate_language, add_show_docs, strip_ansi, hide_line, rm_header_dash]).process()
    mod = _default_exp(nb)
    cells = []
    for c in nb.cells:
        src = c.get('source') or ''
        d = (
            {**_directives(src), **{k.rstrip(':'): ' '.join(v) for k, v in (c.get('directives_') or {}).items()}}
            if c.cell_type == 'code'
            else {}
        )
        if {'hide', 'default_exp'} & d.keys() or d.get('include') == 'false':
            continue
        c.source = '\n'.join(l for l in src.splitlines() if not _dir.match(l)).strip()
        if c.cell_type == 'code':
            outs = [
                o for o in c.get('outputs', []) if not (o.get('output_type') == 'stream' and o.get('name') == 'stderr')
            ]
            c.outputs = [] if d.get('output') == 'false' else outs
            if 'export' in d or 'exports' in d:  # exported code: folded under its show_doc
                cells.append(
                    nbformat.v4.new_markdown_cell(
                        '<details markdown="1"><summary>Exported '
                        f'source</summary>\n\n```python\n{c.source}\n```\n\n</details>'
                    )
                )
                continue
            if src.lstrip().startswith('show_doc('):  # show the rendered doc, not the call
                md = [o for o in c.outputs if 'text/markdown' in o.get('data', {})]
                md = (
                    ''.join(md[0]['data']['text/markdown']) if md else (_show_doc_md(mod, src) if run_showdoc else None)
                )
                if md:
                    cells.append(nbformat.v4.new_markdown_cell(md))
                continue
        if c.source or c.get('outputs'):
            cells.append(c)
    nb.cells = cells
    d = nb2dict(nb)
    for c in d['cells']:
        c.pop('idx_', None)
        c.pop('has_sd', None)
        c.pop('directives_', None)
    return nbformat.reads(json.dumps(d), as_version=4)  # reads joins the split lines


_code = re.compile(
    r'(```.*?```|`[^`\n]*`|<details.*?</details>)', re.S
)  # left alone: fenced and inline code, folded sources
_math = re.compile(r'\$\$(.+?)\$\$|(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])', re.S)


def math_to_mathml(md: str) -> str:
    "Replace $...$ and $$...$$ outside code with MathML (rendered by the browser itself, no script, no network)."
    from latex2mathml.converter import convert

    def one(m):
        tex, block = (m.group(1), True) if m.group(1) is not None else (m.group(2), False)
        try:
            return convert(tex.strip(), display='block' if block else 'inline')
        except Exception:
            return m.group(0)  # leave what the converter cannot parse as it was written

    return ''.join(part if i % 2 else _math.sub(one, part) for i, part in enumerate(_code.split(md)))


def to_markdown(nb, name, outdir):
    "Write `name`.md and its figures (`name`_files/*.png) into `outdir`; returns the page title."
    from nbconvert import MarkdownExporter

    body, res = MarkdownExporter().from_notebook_node(nb, resources={'output_files_dir': f'{name}_files'})
    for fn, data in res.get('outputs', {}).items():
        (outdir / fn).parent.mkdir(parents=True, exist_ok=True)
        (outdir / fn).write_bytes(data)
    body = re.sub(r'^# # ', '# ', body, flags=re.M)  # titles written as '# # Title'
    body = re.sub(r'\[source\]\(https?://[^)]*\)(\{[^}]*\})?', '', body)  # show_doc links to a repository host
    body = math_to_mathml(body)
    for rel in re.findall(
        r'!\[[^\]]*\]\(((?:docs|bench)/[^)\s]+)\)', body
    ):  # figures a page takes from the repository (README's)
        if (ROOT / rel).is_file():
            (outdir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / rel, outdir / rel)
    (outdir / f'{name}.md').write_text(body)
    m = re.search(r'^# (.+)$', body, re.M)
    return m.group(1).strip() if m else name


def readme(dst=ROOT / 'README.md'):
    """README.md from nbs/index.ipynb: markdown cells as they are, visible code cells as Python blocks (without their
    outputs)."""
    nb = process(NBS / 'index.ipynb', run_showdoc=False)
    text = '\n\n'.join(
        c.source if c.cell_type == 'markdown' else f'```python\n{c.source}\n```' for c in nb.cells if c.source
    )
    Path(dst).write_text(
        '<!-- generated from nbs/index.ipynb by `make readme`: edit the notebook -->\n\n' + text + '\n'
    )


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
extra_css: [pygments.css, print.css]
plugins: []
nav:
{nav}
"""

PRINT_CSS = """/* A page printed (by a reader, or into the methodology PDF): its content only, full width, on A4.
   The folded exported sources are left out: they are the package itself; prose, signatures, examples
   and figures stay. */
@page { size: A4; margin: 16mm 15mm; }
@media print {
  body::before, .navbar, .col-md-3, footer, .modal, .headerlink, details { display: none !important; }
  body > .container { margin-top: 0; max-width: none; width: auto; padding: 0; }
  .row { margin: 0; }
  .col-md-9 { flex: 0 0 100%; max-width: 100%; width: 100%; padding: 0; }
  pre, pre code { white-space: pre-wrap; overflow-wrap: anywhere; }
  img { max-width: 100% !important; break-inside: avoid; }
  h1, h2, h3, h4 { break-after: avoid; }
}
"""


def build(only=None, workers=2, site=SITE, proc=PROC):
    """Execute, process and render the notebooks into docs/site/; returns the chapters, [(notebook stem, page title)] in
    site order."""
    site, proc = Path(site), Path(proc)
    shutil.rmtree(proc, ignore_errors=True)
    (proc / 'docs').mkdir(parents=True)
    nbs = notebooks(only)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as ex:
        executed = list(ex.map(lambda nb: execute(nb, Path(tmp)), nbs))
        titles = [to_markdown(process(e), e.stem, proc / 'docs') for e in executed]
    from pygments.formatters import HtmlFormatter

    (proc / 'docs' / 'pygments.css').write_text(HtmlFormatter().get_style_defs('.codehilite'))
    (proc / 'docs' / 'print.css').write_text(PRINT_CSS)
    nav = '\n'.join(f'  - "{("Home" if p.stem == "index" else t)}": {p.stem}.md' for p, t in zip(nbs, titles))
    (proc / 'mkdocs.yml').write_text(MKDOCS.format(site=site, nav=nav))
    subprocess.run([Path(sys.executable).parent / 'mkdocs', 'build', '-q', '-f', proc / 'mkdocs.yml'], check=True)
    print(f'docs site: {site}/index.html ({len(nbs)} pages)')
    return [(p.stem, _plain(t)) for p, t in zip(nbs, titles)]


# The methodology PDF: each built page printed by headless Chromium, in site order, behind a cover with the contents.
CHROMIUM_FLAGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-dev-shm-usage',
]
IMG_CHECK = """<script>window.addEventListener('load', () => document.body.setAttribute('data-imgs',
  [...document.images].map(i => i.complete && i.naturalWidth > 0 ? 'ok' : 'broken:' + i.src).join(' ')));</script>"""


def chromium(*args, timeout=120) -> str:
    "Run headless Chromium (fresh profile, 5 s of virtual time to load) with `args`; returns what it printed on stdout."
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    if exe is None:
        raise FileNotFoundError('chromium is not installed: `make chromium` (apt-get install chromium)')
    with tempfile.TemporaryDirectory() as prof:
        r = subprocess.run(
            [exe, *CHROMIUM_FLAGS, f'--user-data-dir={prof}', '--virtual-time-budget=5000', *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    return r.stdout


def render(page, pdf=None) -> str:
    """Load built `page` in headless Chromium, optionally printing it to `pdf`; returns its DOM once loaded, images
    noted in body's data-imgs."""
    page = Path(page)
    with tempfile.TemporaryDirectory() as tmp:  # a copy with the image check, its links resolved against the site
        src = (
            page.read_text()
            .replace('<head>', f'<head><base href="{page.parent.as_uri()}/">', 1)
            .replace('</body>', IMG_CHECK + '</body>', 1)
        )
        (copy := Path(tmp) / page.name).write_text(src)
        out = ['--no-pdf-header-footer', f'--print-to-pdf={pdf}'] if pdf else []
        return chromium('--dump-dom', *out, copy.as_uri())


def broken_images(dom: str):
    "The images of a rendered page that did not load (their URLs); None when the page never finished loading."
    m = re.search(r'<body[^>]*data-imgs="([^"]*)"', dom)
    return None if m is None else [i.removeprefix('broken:') for i in m.group(1).split() if i != 'ok']


def print_page(page, pdf):
    "Print built `page` to `pdf`, failing if it did not load, lost an image, or printed nothing."
    broken = broken_images(render(page, pdf))
    if broken is None:
        raise RuntimeError(f'{page.name} did not finish loading in Chromium')
    if broken:
        raise RuntimeError(f'{page.name}: images did not load: {" ".join(broken)}')
    if not Path(pdf).exists() or Path(pdf).stat().st_size == 0:
        raise RuntimeError(f'Chromium did not print {page.name}')
    return Path(pdf)


def _plain(title: str) -> str:
    return re.sub(r'[`*]', '', title).strip()  # a markdown title as text


def _norm(text: str) -> str:
    return re.sub(r'\s+', '', unicodedata.normalize('NFKC', text)).casefold()  # ligatures and line breaks aside


def _revision():
    r = subprocess.run(['git', '-C', ROOT, 'describe', '--always', '--dirty'], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


COVER = """<!doctype html><html><head><meta charset="utf-8"><title>stellar_spectra: methodology</title><style>
@page {{ size: A4; margin: 25mm 20mm; }}
body {{ font-family: sans-serif; color: #222; }}
h1 {{ font-size: 30pt; margin: 0 0 4pt; }}
.sub {{ font-size: 14pt; color: #555; margin: 0 0 8pt; }}
.meta {{ color: #777; font-size: 9pt; margin-bottom: 24pt; }}
table {{ width: 100%; border-collapse: collapse; font-size: 10.5pt; }}
td {{ padding: 2.5pt 4pt; border-bottom: 1px solid #eee; }}
td.n, td.pg {{ text-align: right; width: 2.5em; }}
td.nb {{ color: #777; font-family: monospace; font-size: 9pt; }}
</style></head><body><h1>stellar_spectra</h1>
<p class="sub">Methodology: the notebooks, executed and rendered in the order of the docs site</p>
<p class="meta">{meta}</p><h2>Contents</h2><table>{rows}</table></body></html>"""


def cover(chapters, starts) -> str:
    "The cover page: title, build date and revision, and the contents with each chapter's first page."
    rev = _revision()
    meta = (
        f'Built {datetime.date.today().isoformat()}'
        + (f' from revision {rev}' if rev else '')
        + f'; {len(chapters)} chapters.'
    )
    rows = ''.join(
        f'<tr><td class="n">{i}</td><td>{html.escape(t)}</td><td class="nb">nbs/{n}.ipynb</td><td '
        f'class="pg">{p}</td></tr>'
        for i, ((n, t), p) in enumerate(zip(chapters, starts), 1)
    )
    return COVER.format(meta=html.escape(meta), rows=rows)


def merge_pdf(parts, dst, front=None):
    """Concatenate `front` then each (title, pdf) of `parts` into `dst`, with one bookmark per part; links between site
    pages jump to their chapter."""
    from pypdf import PdfWriter
    from pypdf.generic import ArrayObject, NameObject

    w, starts = PdfWriter(), {}
    if front:
        w.append(front, import_outline=False)
    for title, pdf in parts:
        starts[Path(pdf).stem] = len(w.pages)
        w.append(pdf, outline_item=title, import_outline=False)
    for (
        page
    ) in w.pages:  # Chromium wrote links to other pages as file:// URLs: jump within the PDF instead, or drop them
        annots = page.get('/Annots')
        if annots is None:
            continue
        keep = ArrayObject()
        for ref in annots.get_object():
            a = ref.get_object()
            uri = a.get('/A', {}).get('/URI', '')
            if not uri.startswith('file:'):
                keep.append(ref)
                continue
            target = starts.get(Path(uri.split('#')[0]).stem)
            if target is None:
                continue
            del a[NameObject('/A')]
            a[NameObject('/Dest')] = ArrayObject([w.pages[target].indirect_reference, NameObject('/Fit')])
            keep.append(ref)
        page[NameObject('/Annots')] = keep
    w.add_metadata({'/Title': 'stellar_spectra: methodology'})
    w.page_mode = '/UseOutlines'
    with open(dst, 'wb') as f:
        w.write(f)
    return Path(dst)


class PdfCheckError(Exception):
    "The methodology PDF failed a check; the message names the notebooks and pages."


def check_pdf(pdf, chapters):
    """Check the PDF page by page: at least a page per chapter; one bookmark per chapter, in site order, on a page that
    opens with the chapter's title; no blank page (each has text or an image). Raises PdfCheckError listing every
    failure."""
    from pypdf import PdfReader

    r = PdfReader(pdf)
    texts = [p.extract_text() or '' for p in r.pages]
    problems = []
    if len(texts) < len(chapters):
        problems.append(f'{len(texts)} pages for {len(chapters)} chapters')
    marks = [(_plain(o.title), r.get_destination_page_number(o)) for o in r.outline if not isinstance(o, list)]
    found, last, left = {}, -1, list(marks)  # a bookmark matches one chapter only, should two share a title
    for name, title in chapters:
        hits = [m for m in left if _norm(m[0]) == _norm(title)]
        if not hits:
            problems.append(f'chapter "{title}" (nbs/{name}.ipynb) is missing: no bookmark')
            continue
        left.remove(hits[0])
        p = found[name] = hits[0][1]
        if p <= last:
            problems.append(
                f'chapter "{title}" (nbs/{name}.ipynb) is out of order: it starts on page {p + 1}, not after page '
                f'{last + 1}'
            )
        if not _norm(texts[p]).startswith(_norm(title)):
            problems.append(
                f'chapter "{title}" (nbs/{name}.ipynb): its page {p + 1} does not open with its title but with '
                f'{texts[p].strip()[:60]!r}'
            )
        last = max(last, p)
    if left:
        problems.append(f'bookmarks for no notebook: {[t for t, _ in left]}')
    starts = sorted((p, n) for n, p in found.items())
    for i, (page, text) in enumerate(zip(r.pages, texts)):
        if text.strip() or page.images:
            continue
        owner = [n for p, n in starts if p <= i]
        problems.append(
            f'page {i + 1} is blank' + (f' (in nbs/{owner[-1]}.ipynb)' if owner else ' (before the first chapter)')
        )
    if problems:
        raise PdfCheckError(f'{pdf}:\n  ' + '\n  '.join(problems))
    return len(texts)


def write_pdf(chapters, site=SITE, dst=None, workers=2):
    """Print the built pages of `chapters` (from `build`) into one checked PDF, `dst` (default: methodology.pdf in the
    site)."""
    from pypdf import PdfReader

    site = Path(site)
    dst = Path(dst) if dst else site / PDF_NAME
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as ex:
        tmp = Path(tmp)
        parts = list(ex.map(lambda c: print_page(site / f'{c[0]}.html', tmp / f'{c[0]}.pdf'), chapters))
        sizes = [len(PdfReader(p).pages) for p in parts]
        front, n_front = tmp / '_cover.pdf', 1
        for _ in range(3):  # the contents' page numbers depend on the cover's own length
            starts = [n_front + 1 + sum(sizes[:i]) for i in range(len(sizes))]
            (tmp / '_cover.html').write_text(cover(chapters, starts))
            print_page(tmp / '_cover.html', front)
            if len(PdfReader(front).pages) == n_front:
                break
            n_front = len(PdfReader(front).pages)
        merge_pdf([(t, p) for (_, t), p in zip(chapters, parts)], dst, front)
    n = check_pdf(dst, chapters)
    print(f'methodology PDF: {dst} ({n} pages, {len(chapters)} chapters, checked)')
    return dst


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=' '.join(__doc__.split('\n\n')[0].split()))
    ap.add_argument('--only', nargs='*', help='notebook names (stems) to include')
    ap.add_argument('--readme', action='store_true', help='only regenerate README.md from nbs/index.ipynb')
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument(
        '--pdf',
        type=Path,
        default=SITE / PDF_NAME,
        help=f'where to write the methodology PDF (default: docs/site/{PDF_NAME})',
    )
    ap.add_argument('--no-pdf', action='store_true', help='build the site only')
    a = ap.parse_args()
    if a.readme:
        readme()
        sys.exit()
    chapters = build(a.only, a.workers)
    if not a.no_pdf:
        try:
            write_pdf(chapters, SITE, a.pdf, a.workers)
        except (PdfCheckError, RuntimeError, FileNotFoundError) as e:
            sys.exit(f'methodology PDF failed: {e}')
