"""The docs site: build a few pages (home, command line, mock sky) and open them in headless Chromium,
checking that headings, prose, code and figures render. The screenshot is kept as docs/screenshot.png."""
import re, shutil, subprocess, sys, tempfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'docs'))
import build

PAGES = ['index', 'cli', 'a4_mocksky']
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']
CHECK = """<script>window.addEventListener('load', () => document.body.setAttribute('data-imgs',
  [...document.images].map(i => i.complete && i.naturalWidth > 0 ? 'ok' : 'broken:' + i.src).join(' ')));</script>"""

def chromium(*args):
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    if exe is None: pytest.fail('chromium is not installed (make test installs it: apt-get install chromium)')
    with tempfile.TemporaryDirectory() as prof:
        r = subprocess.run([exe, *FLAGS, f'--user-data-dir={prof}', '--virtual-time-budget=5000', *args],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    return r.stdout

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('docs')
    build.build(PAGES, workers=2, site=tmp/'site', proc=tmp/'proc')
    return tmp/'site'

def test_nav_order():
    names = [p.stem for p in build.notebooks()]
    assert names[0] == 'index' and names.index('a4_mocksky') > max(i for i, n in enumerate(names) if n[0].isdigit())

def test_offline_theme(site):
    "No page loads anything from the network (fonts, scripts, styles)."
    for page in site.glob('*.html'):
        html = page.read_text()
        assert not re.findall(r'<(?:script|link|img)[^>]*(?:src|href)="(?:https?:)?//', html), page.name

def test_pages_render(site):
    for name in PAGES:
        page = site/f'{name}.html'
        page.write_text(page.read_text().replace('</body>', CHECK + '</body>'))
        dom = chromium('--dump-dom', page.as_uri())
        assert re.search(r'<h1[^>]*>', dom) and '<p>' in dom, name
        imgs = re.search(r'<body[^>]*data-imgs="([^"]*)"', dom)
        assert imgs and 'broken' not in imgs.group(1), (name, imgs and imgs.group(1))
        if name == 'a4_mocksky':
            assert imgs.group(1).split().count('ok') >= 1  # its figures load
            assert dom.count('<math') >= 3 and '$p = 1$' not in dom  # LaTeX rendered as MathML, none left raw
        if name != 'index': assert 'class="codehilite"' in dom, name
        if name == 'cli': assert 'build_parser' in dom and '<table' in dom  # show_doc with its docments table

def test_screenshot(site):
    shot = ROOT/'docs'/'screenshot.png'
    chromium(f'--screenshot={shot}', '--window-size=1280,2400', (site/'a4_mocksky.html').as_uri())
    assert shot.exists() and shot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and shot.stat().st_size > 20_000

def test_math_outside_code_only():
    md = 'a $x_i^2$ b, costs $5 and $3, `$c$` and\n```\n$d$\n```\n$$\\frac{1}{R}$$'
    out = build.math_to_mathml(md)
    assert out.count('<math') == 2 and 'display="block"' in out and '<msubsup>' in out
    assert '$5 and $3' in out and '`$c$`' in out and '\n$d$\n' in out
