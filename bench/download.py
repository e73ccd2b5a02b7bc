"""Throughput of stellar_spectra.io.download against `wget -c` and `curl -C -` on loopback, same files, same server, one
run.

Usage (from the repository root): python bench/download.py [--small 500 --small-kb 50 --large 4 --large-mb 200 --latency
0.01 --repeat 5 --only small,large,latency --latency 0.001,0.01]
Writes bench/results/download.md. The server (stellar_spectra.mock.mirror.serve_directory: HTTP/1.1 keep-alive, Range,
sendfile) runs in its own process so it does not share an interpreter with the client under test.

The other clients are run the way a user would fetch a list of files:
- `wget -c -i LIST`: one process, the URLs one after the other on one kept-alive connection;
- `curl -C - -K LIST`: one process, a config file of `url`/`output` pairs, one after the other on one connection;
- `curl -C - --parallel --parallel-max 4 -K LIST`: the same list with curl's own concurrency (4, like our per-host
default);
- a shell loop, `while read p; do curl -C - -o dest/$p URL/$p; done < LIST`: one curl process (and connection) per file;
- `curl -C - -K LIST && sha256sum -c SUMS`: the same work as this client (which checks every byte), done the usual way.
"""

import argparse, hashlib, os, platform, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

from stellar_spectra.io.manifest import Entry
from stellar_spectra.io.download import download

REPO = Path(__file__).resolve().parents[1]


def make_files(root, n, size, sub):
    "n files of `size` random bytes under root/sub; returns their relative paths."
    out = []
    for i in range(n):
        f = root / sub / f'{i % 10}' / f'f{i:05d}.fits'
        f.parent.mkdir(parents=True, exist_ok=True)
        if not (f.exists() and f.stat().st_size == size):
            with open(f, 'wb') as fh:
                for _ in range(0, size, 1 << 24):
                    fh.write(os.urandom(min(1 << 24, size - fh.tell())))
        out.append(str(f.relative_to(root)))
    return out


SERVER = """import sys, time
from stellar_spectra.mock.mirror import RangeRequestHandler, serve_directory
class Handler(RangeRequestHandler):
    def do_GET(self): time.sleep(float(sys.argv[2])); super().do_GET()  # latency before each answer
s = serve_directory(sys.argv[1], Handler if float(sys.argv[2]) else RangeRequestHandler)
print(s.url, flush=True); time.sleep(3600)"""


def start_server(root, latency=0.0):
    "The benchmark's HTTP server in a separate process, answering after `latency` s; returns (process, base URL)."
    p = subprocess.Popen([sys.executable, '-c', SERVER, str(root), str(latency)], stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


def run_ours(paths, url, dest, sizes, **kw):
    """This client, from a manifest of paths and sizes (as `add_checksums` writes; the size tells a large file in
    advance)."""
    s = download([Entry(p, size=sizes[p]) for p in paths], dest, base_url=url, progress=False, **kw)
    assert s['ok'] == len(paths) and s['failed'] == 0, s['failures'][:3]


def run_wget(paths, url, dest):
    lst = dest.parent / 'wget.txt'
    lst.write_text(''.join(f'{url}{p}\n' for p in paths))
    subprocess.run(['wget', '-c', '-q', '-x', '-nH', '-P', str(dest), '-i', str(lst)], check=True)


def run_curl(paths, url, dest, parallel=0):
    cfg = dest.parent / 'curl.cfg'
    cfg.write_text(''.join(f'url = "{url}{p}"\noutput = "{dest / p}"\n' for p in paths))
    extra = ['--parallel', '--parallel-max', str(parallel)] if parallel else []
    subprocess.run(
        ['curl', '-C', '-', '-s', '-S', '-f', '--no-progress-meter', '--create-dirs', *extra, '-K', str(cfg)],
        check=True,
    )


def run_curl_verified(paths, url, dest, sums):
    run_curl(paths, url, dest)
    subprocess.run(
        ['sha256sum', '--quiet', '--strict', '-c', str(sums)], cwd=dest, check=True, stdout=subprocess.DEVNULL
    )


def run_curl_loop(paths, url, dest):
    lst = dest.parent / 'list.txt'
    lst.write_text(''.join(f'{p}\n' for p in paths))
    loop = 'while read p; do curl -C - -s -S -f --create-dirs -o "$2/$p" "$1$p" || exit 1; done < "$3"'
    subprocess.run(['bash', '-c', loop, 'loop', url, str(dest), str(lst)], check=True)


def cpu():
    "CPU seconds (user + system) of this process and its finished children."
    return sum(
        r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def timed(fn, paths, root, work):
    "Wall time and client CPU time of one run into a fresh folder, after checking every file arrived whole."
    dest = work / 'dest'
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    os.sync()
    time.sleep(0.2)  # the previous run's deletes (and the disk's discards) are committed before the clock starts
    c, t = cpu(), time.perf_counter()
    fn(paths, dest)
    t, c = time.perf_counter() - t, cpu() - c
    assert all((dest / p).stat().st_size == (root / p).stat().st_size for p in paths), 'incomplete download'
    shutil.rmtree(dest, ignore_errors=True)
    return t, c


OURS = 'stellar_spectra (defaults: 8 workers, 4 per host, 2 large files at a time)'
SEQUENTIAL = (
    'wget -c -i LIST',
    'curl -C - -K LIST',
    'shell loop: curl -C - per file',
)  # how a user fetches a list with them


def clients(url, sums, sizes):
    "The clients compared, by name; the first is this client with its default settings."
    return {
        OURS: lambda ps, d: run_ours(ps, url, d, sizes),
        'stellar_spectra (1 worker)': lambda ps, d: run_ours(ps, url, d, sizes, n_workers=1, per_host=1),
        'wget -c -i LIST': lambda ps, d: run_wget(ps, url, d),
        'curl -C - -K LIST': lambda ps, d: run_curl(ps, url, d),
        'curl -C - --parallel-max 4 -K LIST': lambda ps, d: run_curl(ps, url, d, parallel=4),
        'shell loop: curl -C - per file': lambda ps, d: run_curl_loop(ps, url, d),
        'curl -C - -K LIST, then sha256sum -c': lambda ps, d: run_curl_verified(ps, url, d, sums),
    }


def measure(name, paths, src, work, latency, repeat):
    """Best and median wall time, and least client CPU, of every client on one workload (runs interleaved, so load from
    elsewhere hits all alike)."""
    sums = work / 'sha256sums.txt'
    work.mkdir(parents=True, exist_ok=True)
    sums.write_text(
        ''.join(f'{hashlib.sha256((src / p).read_bytes()).hexdigest()}  {p}\n' for p in paths)
    )  # from the manifest
    server, url = start_server(src, latency)
    try:
        sizes = {p: (src / p).stat().st_size for p in paths}
        cs, mb = clients(url, sums, sizes), sum(sizes.values()) / 1e6
        secs, cpus = {c: [] for c in cs}, {c: float('inf') for c in cs}
        names = list(cs)
        for r in range(repeat):  # interleaved, each round starting with a different client
            for c in names[r % len(names) :] + names[: r % len(names)]:
                t, u = timed(cs[c], paths, src, work)
                secs[c].append(t)
                cpus[c] = min(cpus[c], u)
    finally:
        server.kill()
        server.wait()
    best, med = {c: min(t) for c, t in secs.items()}, {c: statistics.median(t) for c, t in secs.items()}
    rows = [
        (name, c, len(paths), mb, best[c], mb / best[c], best[c] / best[OURS], cpus[c], med[c], med[c] / med[OURS])
        for c in secs
    ]
    for r in rows:
        print(
            f'{r[0]:32s} {r[1]:38s} {r[4]:7.2f} s {r[5]:8.1f} MB/s  ours/row {r[6]:5.2f}  median {r[8]:7.2f} s '
            f'ours/row {r[9]:5.2f}',
            flush=True,
        )
    return rows


def goals(rows):
    """The issue's goals, checked on the measured ratios (this client with its defaults, divided by the row), on the
    best and on the median runs."""
    out = []
    for w, col, stat in (
        (w, col, stat) for w in dict.fromkeys(r[0] for r in rows) for col, stat in ((6, 'best'), (9, 'median'))
    ):
        q = {r[1]: r[col] for r in rows if r[0] == w}
        w = f'{w} ({stat} of the runs)'
        if w.startswith('large'):
            out.append(
                f'- {w}: this client ÷ `curl -C -` = **{q["curl -C - -K LIST"]:.2f}**, ÷ `wget -c` = '
                f'**{q["wget -c -i LIST"]:.2f}** '
                f'(goal ≥ 0.9: {"met" if min(q["curl -C - -K LIST"], q["wget -c -i LIST"]) >= 0.9 else "NOT met"}); '
                f'÷ `curl` then `sha256sum -c` (the same work) = {q["curl -C - -K LIST, then sha256sum -c"]:.2f}.'
            )
        else:
            best = min(SEQUENTIAL, key=lambda c: q[c])
            out.append(
                f'- {w}: this client ÷ the fastest of wget and curl run one file after the other (`{best}`) = '
                f'**{q[best]:.2f}** '
                f'(goal > 1: {"met" if q[best] > 1 else "NOT met"}); ÷ `curl --parallel` = '
                f'{q["curl -C - --parallel-max 4 -K LIST"]:.2f}.'
            )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--small', type=int, default=500)
    ap.add_argument('--small-kb', type=int, default=50)
    ap.add_argument('--large', type=int, default=4)
    ap.add_argument('--large-mb', type=int, default=200)
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--latency', default='0.001,0.01', help='seconds, comma-separated')
    ap.add_argument('--only', default='small,large,latency')
    ap.add_argument('--tmp', default=tempfile.gettempdir())
    ap.add_argument('--out', default=str(REPO / 'bench' / 'results' / 'download.md'))
    a = ap.parse_args()
    load = os.getloadavg()[0]
    for tool in ('wget', 'curl'):
        if not shutil.which(tool):
            sys.exit(f'{tool} not found: apt-get install -y wget curl')
    root = Path(a.tmp) / 'stellar_spectra_bench_download'
    work = root / 'work'
    src = root / 'src'
    small = make_files(src, a.small, a.small_kb * 1000, 'small')
    large = make_files(src, a.large, a.large_mb * 10**6, 'large')
    lats = [float(x) for x in a.latency.split(',')]
    workloads = {
        'small': [(f'small: {a.small} x {a.small_kb} KB, no latency', small, 0.0)],
        'large': [(f'large: {a.large} x {a.large_mb} MB, no latency', large, 0.0)],
        'latency': [(f'small: {a.small} x {a.small_kb} KB, {x * 1e3:g} ms latency', small, x) for x in lats],
    }
    for p in src.rglob('*.fits'):
        p.read_bytes()  # page cache warm for everyone
    t0, rows = time.time(), []
    for name, paths, latency in (w for k in a.only.split(',') for w in workloads[k]):
        rows += measure(name, paths, src, work, latency, a.repeat)
    ver = lambda t: subprocess.run([t, '--version'], capture_output=True, text=True).stdout.splitlines()[0]
    text = [
        '# Download throughput on loopback',
        '',
        f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0))}, {(time.time() - t0) / 60:.0f} min; {os.cpu_count()} '
        'CPUs '
        f'({platform.processor() or platform.machine()}) shared with other work, load average {load:.2f} at the start '
        'and '
        f'{os.getloadavg()[0]:.2f} at the end; Python {platform.python_version()}; {ver("wget")}; '
        f'{ver("curl").split(" (")[0]}. '
        f'Command: `python bench/download.py {" ".join(sys.argv[1:])}`.',
        '',
        'Same files, same server (`serve_directory` in its own process: Python `http.server` threads, HTTP/1.1 '
        'keep-alive, '
        'sendfile), hot page cache, fresh destination each run (the previous one deleted and `sync`ed before the '
        f'clock starts: this disk discards freed blocks, which otherwise slows whoever comes next), {a.repeat} runs '
        'interleaved across clients, each round starting with a different client; the table gives the best and the '
        'median of them (the best is the run that found the machine quietest; the median is the typical run, and on a '
        'shared machine the steadier figure). '
        '"no latency": the server answers at once, so only CPU counts (client, server and the rest of the machine). '
        '"N ms latency": the server waits that long before each answer, a stand-in for the round trip and '
        'time-to-first-byte '
        'of a remote archive (about 1 ms for a mirror in the same data centre, tens to hundreds of ms from a laptop to '
        'the '
        'SDSS, Data Central or ESO archives: the realistic case for many small files). MB = 10^6 bytes. '
        '`stellar_spectra` also hashes every byte (sha256), writes `.part` files and '
        'the lock file; wget and curl do not verify. How the others are run (the way a user fetches a list):',
        '`wget -c -i LIST` and `curl -C - -K LIST` (a config file of url/output pairs) take the files one after the '
        'other on '
        'one kept-alive connection; `curl --parallel-max 4` is curl\'s own concurrency on the same list; the shell '
        'loop '
        'runs `curl -C -` once per file; the last row adds `sha256sum -c` over the fetched files, i.e. the same work '
        'as '
        'this client, which hashes every byte. Last but one column: this client (default settings, first row) divided '
        'by the '
        'row\'s throughput, for the best and for the median runs. Client CPU: user + system seconds of the client '
        'alone (least of the runs); the server\'s is not counted.',
        '',
        '| workload | client | files | MB | seconds (best) | MB/s (best) | this client ÷ row (best) | seconds (median) '
        '| this client ÷ row (median) | client CPU s |',
        '|---|---|---|---|---|---|---|---|---|---|',
    ]
    text += [
        f'| {w} | {c} | {n} | {mb:.0f} | {s:.2f} | {r:.1f} | {q:.2f} | {sm:.2f} | {qm:.2f} | {u:.2f} |'
        for w, c, n, mb, s, r, q, u, sm, qm in rows
    ]
    text += ['', 'Goals of issue #4, on these figures:', '', *goals(rows)]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text('\n'.join(text) + '\n')
    print('\n'.join(goals(rows)), '\nwrote', a.out)


if __name__ == '__main__':
    main()
