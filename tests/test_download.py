"""Integration tests of `stellar_spectra.io.download` against a real HTTP server on 127.0.0.1 that injects faults."""

import hashlib, json, os, signal, socket, subprocess, sys, threading, time
from collections import Counter, defaultdict
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from stellar_spectra.io.download import LOCK_NAME, DownloadFailed
from stellar_spectra.io.manifest import add_checksums, write_manifest
from stellar_spectra.io.manifest import Entry, catalogue_manifest
from stellar_spectra.mock.mirror import RangeRequestHandler
from stellar_spectra.io.download import download as fetch_all


def download(*args, **kw):
    "`download`'s summary, also when some files failed (the `DownloadFailed` it raises then carries it)."
    try:
        return fetch_all(*args, **kw)
    except DownloadFailed as err:
        return err.summary


CHUNK = 1 << 16  # client chunk in these tests: the slack allowed on a resumed transfer
FAST = dict(progress=False, backoff=0.01, chunk=CHUNK, timeout=5.0)


class _StampedWrites:
    """A handler's output stream that notes when each write starts: the client cannot have the answer's last byte before
    that."""

    def __init__(self, handler, wfile):
        self.handler, self.wfile = handler, wfile

    def write(self, b):
        if (log := getattr(self.handler, 'log', None)) is not None:
            log['t1'] = time.monotonic()
        return self.wfile.write(b)

    def __getattr__(self, k):
        return getattr(self.wfile, k)


class FaultHandler(RangeRequestHandler):
    """RangeRequestHandler that counts bytes per file, notes when each request is in progress, and plays the faults
    queued for a path."""

    def setup(self):
        super().setup()
        self.wfile = _StampedWrites(self, self.wfile)

    def do_GET(self):
        rel = unquote(urlsplit(self.path).path).lstrip('/')
        srv = self.server
        with srv.lock:
            self.fault = srv.faults[rel].pop(0) if srv.faults[rel] else srv.always.get(rel)
            self.log = dict(path=rel, range=self.headers.get('Range'), fault=self.fault, sent=0, t0=time.monotonic())
            srv.log.append(self.log)
        if self.fault in ('500', '404'):
            return self.send_error(int(self.fault))
        if self.fault == 'norange' and 'Range' in self.headers:
            del self.headers['Range']
        if self.fault == 'chunked':  # no Content-Length: the body in chunks, a zero-length chunk marks its end
            body = (Path(self.directory) / rel).read_bytes()
            self.send_response(200)
            self.send_header('Transfer-Encoding', 'chunked')
            self.end_headers()
            for i in range(0, len(body), 100_000):
                self.wfile.write(b'%x\r\n%s\r\n' % (len(body[i : i + 100_000]), body[i : i + 100_000]))
            self.wfile.write(b'0\r\n\r\n')
            self.log['sent'] = len(body)
            return
        if self.fault == 'badrange':  # a 206 that does not start where asked
            body = (Path(self.directory) / rel).read_bytes()
            self.send_response(206)
            self.send_header('Content-Length', str(len(body) - 1))
            self.send_header('Content-Range', f'bytes 1-{len(body) - 1}/{len(body)}')
            self.end_headers()
            return self.send_body(open(Path(self.directory) / rel, 'rb'), 1, len(body) - 1)
        super().do_GET()

    def send_body(self, f, start, length):
        kind, _, arg = (self.fault or '').partition(':')
        f.seek(start)
        left, pos = length, 0
        while left:
            b = f.read(min(left, 1 << 16))
            if kind == 'drop' and pos + len(b) >= int(arg):  # send arg bytes, then cut the connection
                b = b[: int(arg) - pos]
                self.wfile.write(b)
                self.log['sent'] += len(b)
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if kind == 'corrupt' and pos == 0:
                b = bytes([b[0] ^ 0xFF]) + b[1:]
            if kind == 'stall' and pos >= length // 2:
                time.sleep(float(arg))
                kind = ''
            if kind == 'slow':
                time.sleep(float(arg))
            self.wfile.write(b)
            self.log['sent'] += len(b)
            left -= len(b)
            pos += len(b)


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients hang up on purpose here


def _max_overlap(log):
    """Most requests in progress at once: each from its arrival to the start of its answer's last write (when the client
    can next ask)."""
    events = sorted(
        [(r['t0'], 1) for r in log] + [(r['t1'], -1) for r in log]
    )  # at equal times an end comes before a start
    return max(np.cumsum([d for _, d in events]), default=0)


def fault_server(root, tls=None):
    """A fault-injecting server on an ephemeral port of 127.0.0.1 serving `root`, behind TLS when given an
    `ssl.SSLContext`."""
    root.mkdir()
    srv = FaultServer(('127.0.0.1', 0), partial(FaultHandler, directory=str(root)))
    if tls:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    srv.root, srv.url, srv.lock, srv.log = (
        root,
        f'{"https" if tls else "http"}://127.0.0.1:{srv.server_port}/',
        threading.Lock(),
        [],
    )
    srv.faults, srv.always = defaultdict(list), {}
    srv.sent = lambda path: sum(r['sent'] for r in srv.log if r['path'] == path)
    srv.max_active = lambda: _max_overlap(srv.log)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def server(tmp_path):
    "A fault-injecting HTTP server serving tmp_path/src; shuts itself down after 100 s."
    srv = fault_server(tmp_path / 'src')
    timer = threading.Timer(100, srv.shutdown)
    timer.daemon = True
    timer.start()
    yield srv
    timer.cancel()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(params=['spliced', 'buffered', 'file system refuses splice'])
def body_path(request, monkeypatch):
    """Run a test on the ways a body reaches its file: os.splice (Linux, plain HTTP), reads into buffers, and splice
    into a file system that refuses it (EINVAL); counts spliced calls."""
    import errno
    import stellar_spectra.io.http1 as http1

    calls = Counter()
    if request.param == 'buffered':
        monkeypatch.setattr(http1, 'SPLICE', False)
    else:
        if not http1.SPLICE:
            pytest.skip('no os.splice on this system')
        orig = http1.Response.splice_into

        def counted(self, *a):
            calls['splice'] += 1
            return orig(self, *a)

        monkeypatch.setattr(http1.Response, 'splice_into', counted)
        if request.param.startswith('file system'):
            real = os.splice

            def refusing(src, dst, n, offset_src=None, offset_dst=None, **kw):
                if offset_dst is not None:
                    calls['refused'] += 1
                    raise OSError(errno.EINVAL, 'Invalid argument')
                return real(src, dst, n, offset_src=offset_src, offset_dst=offset_dst, **kw)

            monkeypatch.setattr(os, 'splice', refusing)
    yield request.param, calls
    assert (calls['splice'] > 0) == (request.param != 'buffered')  # the path under test was the one taken
    assert (calls['refused'] > 0) == request.param.startswith('file system')


def make_files(root, sizes, seed=0, sub='sdss/d'):
    "Random files under root; returns their manifest entries with size and sha256."
    rng, es = np.random.default_rng(seed), []
    for i, n in enumerate(sizes):
        f = root / sub / f'{i % 3}' / f'f{i}.fits'
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(rng.bytes(n))
        es.append(Entry(str(f.relative_to(root))))
    return add_checksums(es, root)


def same(dest, root, es):
    return all((dest / e.path).read_bytes() == (root / e.path).read_bytes() for e in es)


def test_good_files_arrive_identical_and_second_run_skips(server, tmp_path, body_path):
    es = make_files(server.root, [0, 1, 1000, 70_000, 300_000] + [5000] * 20)
    dest = tmp_path / 'dest'
    s = download(write_manifest([Entry(e.path) for e in es], tmp_path / 'm.csv'), dest, base_url=server.url, **FAST)
    assert (s['ok'], s['failed']) == (len(es), 0) and same(dest, server.root, es)
    lock = json.loads((dest / LOCK_NAME).read_text())['files']
    assert all(lock[e.path]['sha256'] == e.sha256 for e in es)
    n = len(server.log)
    s = download(es, dest, base_url=server.url, **FAST)
    assert (s['skipped'], s['ok'], len(server.log)) == (len(es), 0, n)  # nothing requested
    assert not list(dest.rglob('*.part*'))


def test_dropped_connection_resumes_with_range(server, tmp_path, body_path):
    (e,) = make_files(server.root, [3_000_000])
    e = Entry(e.path, size=e.size, md5=hashlib.md5((server.root / e.path).read_bytes()).hexdigest())  # md5 only
    server.faults[e.path] = ['drop:1000000', 'drop:1000000']
    s = download([e], tmp_path / 'd', base_url=server.url, **FAST)
    assert s['ok'] == 1 and s['retries'] == 2 and same(tmp_path / 'd', server.root, [e])
    first, second, third = server.log
    assert second['range'] == f'bytes={first["sent"]}-'  # continues where the data stopped
    assert third['range'] == f'bytes={first["sent"] + second["sent"]}-'
    assert server.sent(e.path) <= e.size + CHUNK  # no more than the missing bytes plus one chunk


def test_corrupted_file_detected_and_fetched_again(server, tmp_path, body_path):
    (e,) = make_files(server.root, [200_000])
    server.faults[e.path] = ['corrupt']
    s = download([e], tmp_path / 'd', base_url=server.url, **FAST)
    assert (s['ok'], s['retries']) == (1, 1) and same(tmp_path / 'd', server.root, [e])
    assert [r['range'] for r in server.log] == [None, None]  # the bad copy was discarded, not resumed


def test_500_retried_and_404_recorded_without_stopping_the_rest(server, tmp_path):
    es = make_files(server.root, [10_000] * 6)
    server.faults[es[0].path] = ['500', '500']
    missing = Entry('sdss/d/0/nothere.fits')
    s = download(es + [missing], tmp_path / 'd', base_url=server.url, **FAST)
    assert (s['ok'], s['failed'], s['retries']) == (6, 1, 2) and same(tmp_path / 'd', server.root, es)
    (f,) = s['failures']
    assert (f['path'], f['status'], f['attempts']) == (missing.path, 404, 1) and '404' in f['error']
    assert json.loads((tmp_path / 'd' / LOCK_NAME).read_text())['failed'][missing.path]['status'] == 404
    assert not (tmp_path / 'd' / missing.path).exists()


def test_too_many_5xx_gives_up(server, tmp_path):
    (e,) = make_files(server.root, [1000])
    server.always[e.path] = '500'
    s = download([e], tmp_path / 'd', base_url=server.url, retries=2, **FAST)
    assert (s['failed'], s['failures'][0]['attempts'], len(server.log)) == (1, 3, 3)


def test_stall_times_out_and_resumes(server, tmp_path, body_path):
    (e,) = make_files(server.root, [400_000])
    server.faults[e.path] = ['stall:3']
    s = download([e], tmp_path / 'd', base_url=server.url, **dict(FAST, timeout=0.5))
    assert s['ok'] == 1 and s['retries'] >= 1 and same(tmp_path / 'd', server.root, [e])
    assert server.log[1]['range'] is not None and server.sent(e.path) <= e.size + CHUNK


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    (e,) = make_files(server.root, [500_000])
    server.faults[e.path] = ['drop:200000', 'norange']
    s = download([e], tmp_path / 'd', base_url=server.url, **FAST)
    assert s['ok'] == 1 and same(tmp_path / 'd', server.root, [e])
    assert server.log[1]['range'] == 'bytes=200000-' and server.log[1]['sent'] == e.size  # a 200 with the whole file


def test_bad_range_answer_restarts_cleanly(server, tmp_path):
    (e,) = make_files(server.root, [300_000])
    server.faults[e.path] = ['drop:100000', 'badrange']
    s = download(
        [Entry(e.path)], tmp_path / 'd', base_url=server.url, **FAST
    )  # no checksum: the range check alone must catch it
    assert s['ok'] == 1 and same(tmp_path / 'd', server.root, [e])
    assert [r['range'] for r in server.log] == [None, 'bytes=100000-', None]


def test_changed_file_on_server_is_fetched_whole(server, tmp_path):
    (e,) = make_files(server.root, [300_000])
    server.faults[e.path] = ['drop:100000']
    s = download([Entry(e.path)], tmp_path / 'd', base_url=server.url, retries=0, **FAST)
    assert s['failed'] == 1 and (tmp_path / 'd' / (e.path + '.part')).stat().st_size == 100_000
    (server.root / e.path).write_bytes(os.urandom(300_000))
    os.utime(server.root / e.path, (1, 1))  # new validator
    s = download([Entry(e.path)], tmp_path / 'd', base_url=server.url, **FAST)
    assert s['ok'] == 1 and (tmp_path / 'd' / e.path).read_bytes() == (server.root / e.path).read_bytes()
    assert server.log[-1]['range'] == 'bytes=100000-' and server.log[-1]['sent'] == 300_000  # If-Range failed: 200


def test_verify_refetches_damaged_and_rehashes_unrecorded(server, tmp_path):
    es = make_files(server.root, [20_000] * 4)
    dest = tmp_path / 'd'
    download(es, dest, base_url=server.url, **FAST)
    (dest / es[0].path).write_bytes(b'damaged')
    lock = json.loads((dest / LOCK_NAME).read_text())
    del lock['files'][es[1].path]
    (dest / LOCK_NAME).write_text(json.dumps(lock))
    n = len(server.log)
    s = download([Entry(e.path) for e in es], dest, base_url=server.url, verify=True, **FAST)
    assert (s['ok'], s['skipped']) == (1, 3) and same(dest, server.root, es)
    assert [r['path'] for r in server.log[n:]] == [es[0].path]
    assert es[1].path in json.loads((dest / LOCK_NAME).read_text())['files']  # re-hashed and recorded


def test_per_host_bound_and_no_partial_file_under_a_final_name(server, tmp_path):
    es = make_files(server.root, [150_000] * 12)
    for e in es:
        server.always[e.path] = 'slow:0.005'
    server.faults[es[0].path] = ['drop:50000']
    server.faults[es[1].path] = ['corrupt']
    server.faults[es[2].path] = ['500']
    dest, bad, stop = tmp_path / 'd', [], threading.Event()

    def watch():  # every file under a final name must be complete and correct at every moment
        while not stop.is_set():
            for e in es:
                try:
                    data = (dest / e.path).read_bytes()
                except FileNotFoundError:
                    continue
                if data != (server.root / e.path).read_bytes():
                    bad.append(e.path)
            time.sleep(0.002)

    t = threading.Thread(target=watch)
    t.start()
    try:
        s = download(es, dest, base_url=server.url, n_workers=8, per_host=2, **FAST)
    finally:
        stop.set()
        t.join()
    assert (s['ok'], s['retries'], bad) == (12, 3, []) and same(dest, server.root, es)
    assert server.max_active() == 2  # parallel, and never more than per_host


def test_unknown_length_body_is_verified(server, tmp_path):
    """A chunked answer (no Content-Length) goes through the pipelined path to its end and is checked against the
    manifest."""
    es = make_files(server.root, [350_000, 10_000])
    for e in es:
        server.always[e.path] = 'chunked'
    s = download(es, tmp_path / 'd', base_url=server.url, **FAST)
    assert (s['ok'], s['retries']) == (2, 0) and same(tmp_path / 'd', server.root, es)
    lock = json.loads((tmp_path / 'd' / LOCK_NAME).read_text())['files']
    assert [lock[e.path]['size'] for e in es] == [e.size for e in es]


def redirector(target: str):
    """An HTTP server on 127.0.0.1 that answers every GET with 302 to `target` + path (a loop when `target` is its own
    URL); returns it."""
    from http.server import BaseHTTPRequestHandler

    class Redirect(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def log_message(self, *a):
            pass

        def do_GET(self):
            body = b'moved'
            self.send_response(302)
            self.send_header('Location', (self.server.target or self.server.url) + self.path.lstrip('/'))
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = FaultServer(('127.0.0.1', 0), Redirect)
    srv.url, srv.target = f'http://127.0.0.1:{srv.server_port}/', target
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_redirects_followed_resumed_and_loops_refused(server, tmp_path):
    """Archives hand files out through redirects: the final URL goes in the lock file, a resumed transfer sends its
    Range on to it, a loop fails without retries."""
    es = make_files(server.root, [2000, 500_000])
    hop = redirector(server.url)
    try:
        server.faults[es[1].path] = ['drop:100000']
        s = download(es, tmp_path / 'd', base_url=hop.url, **FAST)
        assert (s['ok'], s['retries']) == (2, 1) and same(tmp_path / 'd', server.root, es)
        lock = json.loads((tmp_path / 'd' / LOCK_NAME).read_text())['files']
        assert all(lock[e.path]['url'] == server.url + e.path for e in es)  # where the redirect ended
        big = [r for r in server.log if r['path'] == es[1].path]
        assert big[1]['range'] == f'bytes={big[0]["sent"]}-' and server.sent(es[1].path) <= es[1].size + CHUNK
    finally:
        hop.shutdown()
        hop.server_close()
    loop = redirector(None)
    try:
        s = download(es[:1], tmp_path / 'loop', base_url=loop.url, **FAST)
        assert s['failed'] == 1 and s['retries'] == 0 and 'too many redirects' in s['failures'][0]['error']
    finally:
        loop.shutdown()
        loop.server_close()


def test_file_url_mirror(tmp_path):
    root = tmp_path / 'mirror'
    es = make_files(root, [0, 5000, 1_500_000])
    s = download(es, tmp_path / 'd', base_url=root.as_uri(), **FAST)
    assert s['ok'] == 3 and same(tmp_path / 'd', root, es)


@pytest.fixture
def tls_server(tmp_path):
    """The fault-injecting server behind TLS, with a self-signed certificate for 127.0.0.1 (made with the openssl
    command)."""
    import shutil, ssl

    if not shutil.which('openssl'):
        pytest.skip('no openssl command to make a certificate')
    key, cert = tmp_path / 'key.pem', tmp_path / 'cert.pem'
    subprocess.run(
        [
            'openssl',
            'req',
            '-x509',
            '-newkey',
            'rsa:2048',
            '-nodes',
            '-keyout',
            str(key),
            '-out',
            str(cert),
            '-days',
            '1',
            '-subj',
            '/CN=127.0.0.1',
            '-addext',
            'subjectAltName=IP:127.0.0.1',
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = fault_server(tmp_path / 'tls_src', tls=ctx)
    srv.cert = cert
    yield srv
    srv.shutdown()
    srv.server_close()


def test_https_verifies_the_certificate_and_resumes(tls_server, tmp_path, monkeypatch):
    """Over TLS (the buffered path: no splice through encryption): a certificate the client does not trust is a clear
    failure; a trusted one works, and a dropped transfer resumes with Range."""
    es = make_files(tls_server.root, [1000, 600_000])
    s = download(es, tmp_path / 'untrusted', base_url=tls_server.url, **dict(FAST, retries=0))
    assert s['failed'] == 2 and all('CERTIFICATE_VERIFY_FAILED' in f['error'] for f in s['failures'])
    assert not any((tmp_path / 'untrusted' / e.path).exists() for e in es)
    monkeypatch.setenv('SSL_CERT_FILE', str(tls_server.cert))  # ssl.create_default_context() trusts it from here on
    tls_server.log.clear()
    tls_server.faults[es[1].path] = ['drop:200000']
    s = download(es, tmp_path / 'd', base_url=tls_server.url, **FAST)
    assert (s['ok'], s['retries']) == (2, 1) and same(tmp_path / 'd', tls_server.root, es)
    big = [r for r in tls_server.log if r['path'] == es[1].path]
    assert big[1]['range'] == f'bytes={big[0]["sent"]}-' and tls_server.sent(es[1].path) <= es[1].size + CHUNK


def test_killed_client_process_restarts_and_finishes(server, tmp_path):
    (e,) = make_files(server.root, [4_000_000])
    server.always[e.path] = 'slow:0.02'  # ~3 MB/s
    manifest, dest = write_manifest([e], tmp_path / 'm.jsonl'), tmp_path / 'd'
    code = (
        f'from stellar_spectra.io.download import download; '
        f'download({str(manifest)!r}, {str(dest)!r}, base_url={server.url!r}, progress=False, chunk={CHUNK})'
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.Popen([sys.executable, '-c', code], env=env)
    part, t0 = dest / (e.path + '.part'), time.monotonic()
    try:
        while not (part.exists() and part.stat().st_size > 1_000_000):
            assert time.monotonic() - t0 < 60 and p.poll() is None, 'the client did not get going'
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait(timeout=10)
    have = part.stat().st_size
    assert not (dest / e.path).exists() and have < e.size
    del server.always[e.path]
    n = len(server.log)
    r = subprocess.run([sys.executable, '-c', code], env=env, timeout=60)
    assert r.returncode == 0 and same(dest, server.root, [e]) and not part.exists()
    resumed = server.log[n:]
    assert resumed[0]['range'] == f'bytes={have}-' and sum(x['sent'] for x in resumed) <= e.size - have + CHUNK


def test_mock_sky_through_its_catalogues(server, tmp_path):
    "A tiny mock sky fetched over HTTP through a manifest built from its own catalogues, and copied through file://."
    from stellar_spectra.mock import mocksky

    mocksky.generate_mock_sky(server.root, n_stars=4, progress=False)
    es = add_checksums(catalogue_manifest(server.root), server.root)
    meta = json.loads((server.root / 'truth' / 'meta.json').read_text())
    gone = {
        f'galah/GALAH_DR3/spectra/{sid}{c}.fits'
        for sid, cs in meta.get('galah_missing_cameras', {}).items()
        for c in cs
    }
    missing = {e.path for e in es if not e.sha256}
    assert es and missing == gone, f'the catalogues list files the mock sky did not write: {sorted(missing - gone)[:5]}'
    import pandas as pd  # every spectrum file the mock sky wrote is in the manifest

    assert set(pd.read_parquet(server.root / 'truth' / 'observations.parquet')['relpath']) <= {e.path for e in es}
    assert 'sdss' in {e.path.split('/')[0] for e in es} <= {'sdss', 'galah', 'gaiaeso'}
    tar = catalogue_manifest(server.root, galah_tarballs=True)  # the per-night tarball layout
    assert [e for e in tar if 'tar_files' in e.path] and all(
        (server.root / e.path).is_file() for e in tar if e.path.startswith('galah')
    )
    good = [e for e in es if e.sha256]
    for dest, kw in (
        (tmp_path / 'd', dict(manifest=write_manifest(es, tmp_path / 'm.jsonl'), base_url=server.url)),
        (tmp_path / 'copy', dict(manifest=server.root, base_url=str(server.root))),  # a folder as manifest and mirror
    ):
        s = download(dest=dest, **kw, **FAST)
        assert (s['ok'], s['failed']) == (len(good), len(gone)) and same(dest, server.root, good)
        assert {f['path'] for f in s['failures']} == gone and all(f['status'] == 404 for f in s['failures'])
    # only the catalogues to start from, as a user would: one call fetches what they list, then the visits
    # the apStar headers name
    cat = tmp_path / 'archive'
    cats = [
        e.path for e in es if e.path.endswith(('allStar-dr17-synspec_rev1.fits', 'GALAH_DR3_main_allstar_v2.fits'))
    ] + ['gaiaeso/GES_DR4_catalogue.fits', 'gaiaeso/eso_archive_query.csv']
    for c in cats:
        (cat / c).parent.mkdir(parents=True, exist_ok=True)
        (cat / c).write_bytes((server.root / c).read_bytes())
    s = download(cat, cat, base_url=server.url, **FAST)
    visits = {e.path for e in good if '/visit/' in e.path}
    assert (
        visits
        and (s['ok'], s['skipped'], s['failed']) == (len(good) - 2, 2, len(gone))
        and same(cat, server.root, good)
    )


def test_progress_bar_and_summary(server, tmp_path, capsys):
    es = make_files(server.root, [30_000] * 3)
    s = download(es + [Entry('sdss/none.fits')], tmp_path / 'd', base_url=server.url, **dict(FAST, progress=True))
    out = capsys.readouterr()
    assert (
        s['ok'] == 3
        and 'download: 3 fetched, 0 already there, 1 failed' in out.out
        and 'FAILED sdss/none.fits' in out.out
    )
    assert 'files 3/4' in out.err  # the bar: bytes, rate and files
    assert 'download: 4 files to fetch' in out.out  # said before it starts (no bytes: the manifest lacks sizes)
    with pytest.raises(DownloadFailed, match=r'1 of 4 files failed \(HTTP 404: 1\)'):
        fetch_all(es + [Entry('sdss/none.fits')], tmp_path / 'd', base_url=server.url, **FAST)
    assert (
        fetch_all(es + [Entry('sdss/none.fits')], tmp_path / 'd', base_url=server.url, missing_ok=True, **FAST)[
            'failed'
        ]
        == 1
    )
