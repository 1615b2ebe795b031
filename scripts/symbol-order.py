#!/usr/bin/env python3
"""Writes runtime/link/symbol-order.txt: the functions a warm `wfrun exec` runs.

Usage: scripts/symbol-order.py [--check] [WFRUN_BINARY]

The linker places the functions that file names side by side in the
`wfrun` binary (runtime/build.rs), so that a short process faults in a
few dozen pages of code instead of a few hundred scattered ones
(docs/performance.md). The list is the set of functions of the binary
that callgrind saw run in a warm `exec` of a command component
(`hello-job`) and of a node (`hello`), sorted by name.

Symbol names carry hashes that change with the compiler, a dependency's
version or features, and our own crate's build settings, and LLVM's
`.llvm.N` suffixes of local functions change with the code's line
numbers: regenerate the file after any change to `wfrun-runtime`
(`cargo build --release`, then this script, then `cargo build --release`
again, which rebuilds only the `wfrun-runtime` crate; `--check` should
then say 100%). A stale entry
costs nothing but its benefit. `--check` prints how many of the listed
functions the binary still has, and exits 1 below 90%.

Needs valgrind (Debian's package) and the guests built (`cargo bench` or
`scripts/test.sh` builds them). WFRUN_BINARY defaults to
target/release/wfrun.
"""
import os, re, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = os.path.join(ROOT, "target/guests/wasm32-wasip2/release")
ORDER = os.path.join(ROOT, "runtime/link/symbol-order.txt")
SCENARIOS = [
    ["exec", os.path.join(GUESTS, "hello-job.wasm"), "--quiet", "--", "bench"],
    ["exec", os.path.join(GUESTS, "hello.wasm"), "--input", '{"name":"bench"}', "--quiet"],
]


def functions(binary):
    """The binary's function symbols (`nm`): name -> size."""
    out = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            sizes[parts[3]] = int(parts[1], 16)
    return sizes


def ran(profile, binary):
    """The names of the functions of `binary` with a cost in a callgrind profile.

    Callgrind compresses names: `fn=(7) name` defines id 7, and `fn=(7)`
    refers to it; `cfn=` and `cob=` lines define ids too.
    """
    objects, names, current, seen = {}, {}, None, set()

    def intern(table, text):
        m = re.match(r"\((\d+)\)(?: (.*))?$", text)
        if not m:
            return text
        if m.group(2):
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1))

    with open(profile, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("ob="):
                current = intern(objects, line[3:])
            elif line.startswith("cob="):
                intern(objects, line[4:])
            elif line.startswith("fn="):
                name = intern(names, line[3:])
                if current == binary and name:
                    # A function seen again under recursion is `name'2`.
                    seen.add(name.split("'")[0])
            elif line.startswith("cfn="):
                intern(names, line[4:])
    return seen


def profile(binary, args, state, out):
    """Runs `wfrun` under callgrind with the artifact cache warm for it.

    Valgrind reports other CPU features than the machine, so the engine
    caches its own entry: the first run under valgrind compiles, the second
    finds the artifact new and checks its hash, the third (once the entry
    has settled) is the warm run profiled.
    """
    env = dict(os.environ, WFRUN_DIR=state)
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    for _ in range(2):
        subprocess.run(["valgrind", "--tool=none", binary, *args], **quiet)
    time.sleep(3)
    subprocess.run(["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={out}", binary, *args],
                   **quiet)


def main():
    argv = sys.argv[1:]
    check = "--check" in argv
    argv = [a for a in argv if a != "--check"]
    binary = os.path.abspath(argv[0] if argv else os.path.join(ROOT, "target/release/wfrun"))
    sizes = functions(binary)
    if check:
        listed = [line for line in open(ORDER).read().split() if line]
        found = sum(1 for name in listed if name in sizes)
        print(f"{found} of {len(listed)} listed functions are in {binary}")
        sys.exit(0 if found >= 0.9 * len(listed) else 1)
    for scenario in SCENARIOS:
        if not os.path.exists(scenario[1]):
            sys.exit(f"no guest at {scenario[1]}: build the guests first (cargo bench or scripts/test.sh)")
    hot = set()
    with tempfile.TemporaryDirectory() as tmp:
        for i, args in enumerate(SCENARIOS):
            out = os.path.join(tmp, f"callgrind.{i}")
            profile(binary, args, os.path.join(tmp, f"state{i}"), out)
            hot |= ran(out, binary)
    listed = sorted(name for name in hot if name in sizes)
    os.makedirs(os.path.dirname(ORDER), exist_ok=True)
    with open(ORDER, "w") as f:
        f.write("".join(name + "\n" for name in listed))
    size = sum(sizes[name] for name in listed)
    print(f"{len(listed)} functions, {size / 1e6:.2f} MB of code, written to {os.path.relpath(ORDER, ROOT)}")


if __name__ == "__main__":
    main()
