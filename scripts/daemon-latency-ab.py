#!/usr/bin/env python3
"""Times one trigger at a time through two daemon builds, in turn.

Usage: scripts/daemon-latency-ab.py WFRUN_A WFRUN_B [ROUNDS]

Starts one daemon per build, each on a fresh state directory with two jobs
(the Python `python-hello` node and the Rust `hello` node), then for ROUNDS
(default 100) triggers each job once on each daemon, swapping which daemon
goes first every round, and times each trigger until its run is recorded
(client-side, the record polled every 100 microseconds). Prints each p50
and the median of the pair-wise ratios B/A for the Python node. Needs the
guests built (`cargo bench -p wfrun-runtime --bench daemon` builds both).
"""
import json, os, socket, sqlite3, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = {
    "py": os.path.join(ROOT, "examples/dist/python-hello.wasm"),
    "rs": os.path.join(ROOT, "target/guests/wasm32-wasip2/release/hello.wasm"),
}


def start(binary, tmp, name):
    state = os.path.join(tmp, name)
    cfg = os.path.join(tmp, f"{name}.toml")
    with open(cfg, "w") as f:
        for job, bundle in JOBS.items():
            f.write(f'[jobs.{job}]\nbundle = "{bundle}"\ninput = \'{{"name":"bench"}}\'\n')
    process = subprocess.Popen([binary, "daemon", "--config", cfg, "--state-dir", state],
                               stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(os.path.join(state, "wfrun.sock"))
            break
        except OSError:
            time.sleep(0.02)
    return process, sock.makefile("rw"), sqlite3.connect(os.path.join(state, "wfrun.db"), timeout=30)


def once(daemon, job, request):
    _, conn, db = daemon
    started = time.perf_counter()
    conn.write(json.dumps({"id": request, "method": "trigger", "params": {"name": job}}) + "\n")
    conn.flush()
    answer = json.loads(conn.readline())
    assert answer["ok"], answer
    run_id = answer["result"]["run_id"]
    while True:
        status = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
        if status == "succeeded":
            return (time.perf_counter() - started) * 1000
        assert status in ("pending", "running"), status
        time.sleep(0.0001)


def main():
    binaries = {"A": sys.argv[1], "B": sys.argv[2]}
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    with tempfile.TemporaryDirectory() as tmp:
        daemons = {name: start(binary, tmp, name) for name, binary in binaries.items()}
        try:
            request = 0
            for daemon in daemons.values():  # the first run of each loads its program
                for job in JOBS:
                    request += 1
                    once(daemon, job, request)
            times = {(name, job): [] for name in daemons for job in JOBS}
            for i in range(rounds):
                for name in (["A", "B"] if i % 2 == 0 else ["B", "A"]):
                    for job in JOBS:
                        request += 1
                        times[(name, job)].append(once(daemons[name], job, request))
            for (name, job), samples in times.items():
                print(f"{name} {job}: p50 {statistics.median(samples):.2f} ms")
            ratios = [b / a for a, b in zip(times[("A", "py")], times[("B", "py")])]
            print(f"py B/A: {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
        finally:
            for process, _, _ in daemons.values():
                process.kill()
                process.wait()


if __name__ == "__main__":
    main()
