"""python-tuf's client against a repository served over HTTP: the
independent check that wfrun writes repositories any TUF client accepts.

Usage: client.py BASE_URL WORK_DIR TRUSTED_ROOT TARGET...

Refreshes the metadata (keeping it in WORK_DIR/metadata across calls, as a
device keeps its trusted metadata), downloads each TARGET into
WORK_DIR/targets, and prints one JSON object: {"targets": {TARGET: PATH},
"versions": {ROLE: VERSION}}. Exits 1 with the error on stderr if the
client refuses anything.
"""
import json
import sys
from pathlib import Path

from tuf.ngclient import Updater, UpdaterConfig


def main() -> int:
    base, work, root = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    names = sys.argv[4:]
    metadata = work / "metadata"
    targets = work / "targets"
    metadata.mkdir(parents=True, exist_ok=True)
    targets.mkdir(parents=True, exist_ok=True)
    updater = Updater(
        metadata_dir=str(metadata),
        metadata_base_url=f"{base}/metadata/",
        target_base_url=f"{base}/targets/",
        target_dir=str(targets),
        config=UpdaterConfig(targets_max_length=64 * 1024 * 1024),
        bootstrap=root.read_bytes(),
    )
    try:
        updater.refresh()
        found = {}
        for name in names:
            info = updater.get_targetinfo(name)
            if info is None:
                raise RuntimeError(f"no target {name}")
            found[name] = updater.find_cached_target(info) or updater.download_target(info)
    except Exception as error:  # every refusal is a failure of the run
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    # The metadata python-tuf now trusts, as it keeps it on disk.
    versions = {
        role: json.loads((metadata / f"{role}.json").read_bytes())["signed"]["version"]
        for role in ("root", "timestamp", "snapshot", "targets")
    }
    print(json.dumps({"targets": found, "versions": versions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
