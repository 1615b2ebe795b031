#!/usr/bin/env python3
"""Drives a `wfrun daemon` with batches of triggers and reports its rate and CPU.

Usage: scripts/daemon-load.py WFRUN_BINARY [SECONDS]

Starts the daemon on a fresh state directory with one job (the `hello`
node, overlap allowed, 4 run slots), warms it with 1,000 runs, then for
SECONDS (default 8) triggers batches of 2,000 runs, 100 per `trigger`
request, waiting for each batch to be recorded. Prints the CPU each of the
daemon's threads spent per run (microseconds, from /proc/PID/task/*/stat)
and the runs per second. Run two builds in turn (A B A B ...) to compare
them. Needs the guests built (`cargo bench` or `scripts/test.sh` builds them).
"""
import json, os, socket, sqlite3, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLO = os.path.join(ROOT, "target/guests/wasm32-wasip2/release/hello.wasm")


def main():
    wfrun = sys.argv[1]
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "state")
        cfg = os.path.join(tmp, "daemon.toml")
        with open(cfg, "w") as f:
            f.write(f'[daemon]\nmax_concurrent_runs = 4\n[jobs.hello]\nbundle = "{HELLO}"\n'
                    f'input = \'{{"name":"bench"}}\'\nallow_overlap = true\n')
        daemon = subprocess.Popen([wfrun, "daemon", "--config", cfg, "--state-dir", state],
                                  stderr=subprocess.DEVNULL)
        try:
            run(daemon.pid, state, secs)
        finally:
            daemon.kill()
            daemon.wait()


def run(pid, state, secs):
    for _ in range(500):
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(os.path.join(state, "wfrun.sock"))
            break
        except OSError:
            time.sleep(0.02)
    conn = sock.makefile("rw")
    db = sqlite3.connect(os.path.join(state, "wfrun.db"), timeout=30)
    request = 0

    def batch(runs):
        nonlocal request
        for _ in range(runs // 100):
            request += 1
            conn.write(json.dumps({"id": request, "method": "trigger",
                                   "params": {"name": "hello", "count": 100}}) + "\n")
            conn.flush()
            answer = json.loads(conn.readline())
            assert answer["ok"], answer
        while db.execute("SELECT COUNT(*) FROM runs WHERE status IN ('pending', 'running')").fetchone()[0]:
            time.sleep(0.002)

    def cpu_by_thread():
        ticks = os.sysconf("SC_CLK_TCK")
        out = {}
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                stat = open(f"/proc/{pid}/task/{task}/stat").read()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[name] = out.get(name, 0) + (int(fields[11]) + int(fields[12])) / ticks
        return out

    batch(1000)
    started, runs, before = time.time(), 0, cpu_by_thread()
    while time.time() - started < secs:
        batch(2000)
        runs += 2000
    elapsed = time.time() - started
    after = cpu_by_thread()
    spent = {name: (after[name] - before.get(name, 0)) / runs * 1e6 for name in after}
    print(" ".join(f"{name}={us:.1f}" for name, us in spent.items() if us > 0), end=" | ")
    print(f"{runs / elapsed:.0f} runs/s, {sum(spent.values()):.1f} us CPU/run")


if __name__ == "__main__":
    main()
