"""Throughput of stellar_spectra.download against `wget -c` and `curl -C -` on loopback, same files, same server, one run.

Usage (from the repository root): python bench/download.py [--small 500 --small-kb 50 --large 4 --large-mb 200]
Writes bench/results/download.md. The server (stellar_spectra.download.serve_directory: HTTP/1.1 keep-alive, Range,
sendfile) runs in its own process so it does not share an interpreter with the client under test.
"""
import argparse, os, platform, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

from stellar_spectra.download import Entry, download, write_manifest

REPO = Path(__file__).resolve().parents[1]


def make_files(root, n, size, sub):
    "n files of `size` random bytes under root/sub; returns their relative paths."
    out = []
    for i in range(n):
        f = root/sub/f'{i % 10}'/f'f{i:05d}.fits'; f.parent.mkdir(parents=True, exist_ok=True)
        if not (f.exists() and f.stat().st_size == size):
            with open(f, 'wb') as fh:
                for _ in range(0, size, 1 << 24): fh.write(os.urandom(min(1 << 24, size - fh.tell())))
        out.append(str(f.relative_to(root)))
    return out


SERVER = """import sys, time
from stellar_spectra.download import RangeRequestHandler, serve_directory
class Handler(RangeRequestHandler):
    def do_GET(self): time.sleep(float(sys.argv[2])); super().do_GET()  # latency before each answer
s = serve_directory(sys.argv[1], Handler if float(sys.argv[2]) else RangeRequestHandler)
print(s.url, flush=True); time.sleep(3600)"""


def start_server(root, latency=0.0):
    "The benchmark's HTTP server in a separate process, answering after `latency` s; returns (process, base URL)."
    p = subprocess.Popen([sys.executable, '-c', SERVER, str(root), str(latency)], stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


def run_ours(paths, url, dest, **kw):
    s = download([Entry(p) for p in paths], dest, base_url=url, progress=False, **kw)
    assert s['ok'] == len(paths) and s['failed'] == 0, s['failures'][:3]


def run_wget(paths, url, dest):
    lst = dest.parent/'wget.txt'; lst.write_text(''.join(f'{url}{p}\n' for p in paths))
    subprocess.run(['wget', '-c', '-q', '-x', '-nH', '-P', str(dest), '-i', str(lst)], check=True)


def run_curl(paths, url, dest, parallel=0):
    cfg = dest.parent/'curl.cfg'
    cfg.write_text(''.join(f'url = "{url}{p}"\noutput = "{dest/p}"\n' for p in paths))
    extra = ['--parallel', '--parallel-max', str(parallel)] if parallel else []
    subprocess.run(['curl', '-C', '-', '-s', '-S', '-f', '--no-progress-meter', '--create-dirs', *extra, '-K', str(cfg)], check=True)


def cpu():
    "CPU seconds (user + system) of this process and its finished children."
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def timed(fn, paths, root, work):
    "Wall time and client CPU time of one run into a fresh folder, after checking every file arrived whole."
    dest = work/'dest'
    shutil.rmtree(dest, ignore_errors=True); dest.mkdir(parents=True)
    c, t = cpu(), time.perf_counter(); fn(paths, dest); t, c = time.perf_counter() - t, cpu() - c
    assert all((dest/p).stat().st_size == (root/p).stat().st_size for p in paths), 'incomplete download'
    shutil.rmtree(dest, ignore_errors=True)
    return t, c


def clients(url):
    "The clients compared, by name; the first is this client with its default settings."
    return {'stellar_spectra (8 workers, 4 per host)': lambda ps, d: run_ours(ps, url, d),
            'stellar_spectra (1 worker)': lambda ps, d: run_ours(ps, url, d, n_workers=1, per_host=1),
            'wget -c': lambda ps, d: run_wget(ps, url, d),
            'curl -C -': lambda ps, d: run_curl(ps, url, d),
            'curl -C - --parallel (max 4)': lambda ps, d: run_curl(ps, url, d, parallel=4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--small', type=int, default=500); ap.add_argument('--small-kb', type=int, default=50)
    ap.add_argument('--large', type=int, default=4); ap.add_argument('--large-mb', type=int, default=200)
    ap.add_argument('--repeat', type=int, default=3); ap.add_argument('--latency', type=float, default=0.01); ap.add_argument('--tmp', default=tempfile.gettempdir())
    ap.add_argument('--out', default=str(REPO/'bench'/'results'/'download.md'))
    a = ap.parse_args(); load = os.getloadavg()[0]
    for tool in ('wget', 'curl'):
        if not shutil.which(tool): sys.exit(f'{tool} not found: apt-get install -y wget curl')
    root = Path(a.tmp)/'stellar_spectra_bench_download'; work = root/'work'; src = root/'src'
    small = make_files(src, a.small, a.small_kb * 1000, 'small')
    large = make_files(src, a.large, a.large_mb * 10**6, 'large')
    workloads = [(f'{a.small} x {a.small_kb} KB', small, 0.0), (f'{a.large} x {a.large_mb} MB', large, 0.0),
                 (f'{a.small} x {a.small_kb} KB, {a.latency * 1e3:.0f} ms latency', small, a.latency)]
    for p in src.rglob('*.fits'): p.read_bytes()  # page cache warm for everyone
    rows = []
    for w, paths, latency in workloads:
        server, url = start_server(src, latency)
        try:
            cs, mb = clients(url), sum((src/p).stat().st_size for p in paths) / 1e6
            secs, cpus = {c: float('inf') for c in cs}, {c: float('inf') for c in cs}
            for _ in range(a.repeat):  # interleaved, so load from elsewhere on the machine hits every client alike
                for c, fn in cs.items():
                    t, u = timed(fn, paths, src, work); secs[c], cpus[c] = min(secs[c], t), min(cpus[c], u)
        finally: server.kill(); server.wait()
        ours = mb / secs[next(iter(cs))]
        for c, s in secs.items(): rows.append((w, c, len(paths), mb, s, mb / s, ours / (mb / s), cpus[c]))
        print(*(f'{w:28s} {c:38s} {s:7.2f} s {mb / s:8.1f} MB/s' for c, s in secs.items()), sep='\n', flush=True)
    ver = lambda t: subprocess.run([t, '--version'], capture_output=True, text=True).stdout.splitlines()[0]
    text = ['# Download throughput on loopback', '',
            f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), '
            f'load average at the start {load:.2f} (the machine is shared); Python {platform.python_version()}; '
            f'{ver("wget")}; {ver("curl").split(" (")[0]}.', '',
            'Same files, same server (`serve_directory`, its own process, HTTP/1.1 keep-alive, sendfile), hot page cache, '
            f'fresh destination each run, best of {a.repeat} interleaved runs. The latency workload makes the server wait '
            f'{a.latency * 1e3:.0f} ms before each answer (a stand-in for the '
            'round trip to a remote archive, which is tens to hundreds of ms). MB = 10^6 bytes. `stellar_spectra` also hashes every byte '
            '(sha256) and writes the lock file; wget and curl do not verify. wget and curl fetch the list one file at a '
            'time on one connection; `curl --parallel` is curl\'s own concurrency. Last column: this client (default '
            'settings) divided by the row\'s throughput. Client CPU: user + system seconds of the client alone (least of the runs), '
            'which load elsewhere on the machine disturbs less than wall time; the server\'s CPU is not counted.', '',
            '| workload | client | files | MB | seconds | MB/s | this client ÷ row | client CPU s |', '|---|---|---|---|---|---|---|---|']
    text += [f'| {w} | {c} | {n} | {mb:.0f} | {s:.2f} | {r:.1f} | {q:.2f} | {u:.2f} |' for w, c, n, mb, s, r, q, u in rows]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text('\n'.join(text) + '\n')
    print('wrote', a.out)


if __name__ == '__main__':
    main()
