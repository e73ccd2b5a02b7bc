"""The docs site: build a few pages (home, command line, mock sky) and open them in headless Chromium,
checking that headings, prose, code and figures render. The screenshot is kept as docs/screenshot.png.
The methodology PDF of those pages: one file, chapters in site order, no blank page, and a check that fails on a broken
one."""

import re, shutil, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'docs'))
import build

PAGES = ['index', 'cli', 'm0_mocksky']


def chromium(*args):
    try:
        return build.chromium(*args)
    except FileNotFoundError as e:
        pytest.fail(str(e))


def need_chromium():
    if not (shutil.which('chromium') or shutil.which('chromium-browser')):
        pytest.fail('chromium is not installed (make chromium)')


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    "The few PAGES built into a temporary site: (site, chapters)."
    tmp = tmp_path_factory.mktemp('docs')
    return tmp / 'site', build.build(PAGES, workers=2, site=tmp / 'site', proc=tmp / 'proc')


@pytest.fixture(scope='module')
def site(built):
    return built[0]


@pytest.fixture(scope='module')
def pdf(built):
    site, chapters = built
    need_chromium()
    return build.write_pdf(chapters, site, site.parent / 'methodology.pdf')


def test_nav_order():
    names = [p.stem for p in build.notebooks()]
    assert names[0] == 'index' and names.index('m0_mocksky') > max(i for i, n in enumerate(names) if n[0].isdigit())


def test_offline_theme(site):
    "No page loads anything from the network (fonts, scripts, styles)."
    for page in site.glob('*.html'):
        html = page.read_text()
        assert not re.findall(r'<(?:script|link|img)[^>]*(?:src|href)="(?:https?:)?//', html), page.name


def test_pages_render(site):
    need_chromium()
    for name in PAGES:
        dom = build.render(site / f'{name}.html')
        assert re.search(r'<h1[^>]*>', dom) and '<p>' in dom, name
        assert build.broken_images(dom) == [], (name, build.broken_images(dom))
        if name == 'm0_mocksky':
            assert re.search(r'<body[^>]*data-imgs="[^"]*\bok\b', dom)  # its figures load
            assert dom.count('<math') >= 3 and '$p = 1$' not in dom  # LaTeX rendered as MathML, none left raw
        if name != 'index':
            assert 'class="codehilite"' in dom, name
        if name == 'cli':
            assert 'build_parser' in dom and '<table' in dom  # show_doc with its docments table


def test_screenshot(site):
    shot = ROOT / 'docs' / 'screenshot.png'
    chromium(f'--screenshot={shot}', '--window-size=1280,2400', (site / 'm0_mocksky.html').as_uri())
    assert shot.exists() and shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and shot.stat().st_size > 20_000


def test_math_outside_code_only():
    md = 'a $x_i^2$ b, costs $5 and $3, `$c$` and\n```\n$d$\n```\n$$\\frac{1}{R}$$'
    out = build.math_to_mathml(md)
    assert out.count('<math') == 2 and 'display="block"' in out and '<msubsup>' in out
    assert '$5 and $3' in out and '`$c$`' in out and '\n$d$\n' in out


def test_pdf(built, pdf):
    """One PDF: a cover whose contents list the chapters in site order, then each page, bookmarked, opening with its
    title."""
    from pypdf import PdfReader

    site, chapters = built
    assert [n for n, _ in chapters] == [p.stem for p in build.notebooks(PAGES)] and list(site.parent.glob('*.pdf')) == [
        pdf
    ]
    r = PdfReader(pdf)
    assert len(r.pages) >= len(PAGES) + 1 and build.check_pdf(pdf, chapters) == len(r.pages)
    marks = [(o.title, r.get_destination_page_number(o)) for o in r.outline]
    assert [t for t, _ in marks] == [t for _, t in chapters] and [p for _, p in marks] == sorted({p for _, p in marks})
    contents = r.pages[0].extract_text()
    assert [contents.index(t) for _, t in chapters] == sorted(contents.index(t) for _, t in chapters)
    for (name, title), (_, start) in zip(chapters, marks):
        assert r.pages[start].extract_text().lstrip().startswith(title)
        assert re.search(rf'{re.escape(title)}\s+nbs/{name}\.ipynb\s+{start + 1}\b', contents), (
            title,
            contents,
        )  # its first page
    assert all(p.extract_text().strip() or p.images for p in r.pages)
    assert sum(len(p.images) for p in r.pages) >= 1  # the mock sky's figures


def _split(pdf, tmp):
    "The chapters of a built PDF as separate files, [(title, path)], from its bookmarks (the cover dropped)."
    from pypdf import PdfReader, PdfWriter

    r = PdfReader(pdf)
    starts = [r.get_destination_page_number(o) for o in r.outline] + [len(r.pages)]
    parts = []
    for o, a, b in zip(r.outline, starts, starts[1:]):
        w = PdfWriter()
        w.append(r, pages=(a, b), import_outline=False)
        w.write(path := tmp / f'part{a}.pdf')
        parts.append((o.title, path))
    return parts


def test_pdf_check_fails(built, pdf, tmp_path):
    """The check names what is wrong: a missing chapter, chapters out of order, a bookmark on the wrong page, a blank
    page, a lost image."""
    from pypdf import PdfWriter

    _, chapters = built
    parts = _split(pdf, tmp_path)

    def check(parts):
        with pytest.raises(build.PdfCheckError) as e:
            build.check_pdf(build.merge_pdf(parts, tmp_path / 'bad.pdf'), chapters)
        return str(e.value)

    (home, home_pdf), cli, mock = parts  # site order: the home page, the chapters (cli), then the mock sky's series
    assert build.check_pdf(
        build.merge_pdf(parts, tmp_path / 'ok.pdf'), chapters
    )  # the parts alone, without a cover, pass
    assert 'chapter "Mock sky" (nbs/m0_mocksky.ipynb) is missing' in check([(home, home_pdf), cli])
    assert 'chapter "Mock sky" (nbs/m0_mocksky.ipynb) is out of order' in check([(home, home_pdf), mock, cli])
    msg = check([(home, home_pdf), (cli[0], mock[1]), (mock[0], cli[1])])
    assert 'chapter "Mock sky" (nbs/m0_mocksky.ipynb): its page' in msg and 'does not open with its title' in msg
    w = PdfWriter()
    w.append(home_pdf)
    w.add_blank_page()
    w.write(blank := tmp_path / 'blank.pdf')
    assert f'page {len(w.pages)} is blank (in nbs/index.ipynb)' in check([(home, blank), cli, mock])
    (tmp_path / 'lost.html').write_text(
        '<html><head></head><body><h1>Lost</h1><img src="no_such_figure.png"></body></html>'
    )
    with pytest.raises(RuntimeError, match='images did not load: .*no_such_figure.png'):
        build.print_page(tmp_path / 'lost.html', tmp_path / 'lost.pdf')
