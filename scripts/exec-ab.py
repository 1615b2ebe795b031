#!/usr/bin/env python3
"""Times a warm `wfrun exec` of two builds in turn.

Usage: scripts/exec-ab.py WFRUN_A WFRUN_B [ROUNDS]

Runs `WFRUN exec hello-job.wasm --quiet -- bench` (its run recorded in a
state directory the two builds share) from each build, ROUNDS times
(default 150), swapping which goes first every round and pausing 5 ms
after each run, after 5 untimed runs of each and a 2.1 s wait (so that the
artifact cache entry has settled). Prints each build's median wall time,
minor page faults and CPU, and the median of the pair-wise ratios B/A with
min and max. Give both builds the same page-cache state (fresh copies, say)
or the ratio measures that too (docs/performance.md, "Which copy of a
binary runs"). Needs the guests built (`cargo bench` or `scripts/test.sh`
builds them).
"""
import os, resource, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "target/guests/wasm32-wasip2/release/hello-job.wasm")


def main():
    a, b = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 150
    with tempfile.TemporaryDirectory() as state:
        env = dict(os.environ, WFRUN_DIR=state)

        def run(binary):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run([binary, "exec", JOB, "--quiet", "--", "bench"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=env, check=True)
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            time.sleep(0.005)
            return wall, after.ru_minflt - before.ru_minflt, cpu

        for _ in range(5):
            run(a)
            run(b)
        time.sleep(2.1)
        ours, theirs, ratios = [], [], []
        for i in range(rounds):
            if i % 2 == 0:
                x, y = run(a), run(b)
            else:
                y, x = run(b), run(a)
            ours.append(x)
            theirs.append(y)
            ratios.append(y[0] / x[0])
    for name, samples in (("A", ours), ("B", theirs)):
        wall, faults, cpu = (statistics.median(s[k] for s in samples) for k in range(3))
        print(f"{name} {wall * 1e3:.2f} ms, {faults:.0f} minor faults, {cpu * 1e3:.2f} ms CPU")
    ratios.sort()
    print(f"B/A {ratios[len(ratios) // 2]:.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f}), {rounds} rounds")


if __name__ == "__main__":
    main()
