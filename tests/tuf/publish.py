"""python-tuf as the publisher: a release repository made by the reference
implementation, laid out as `wfrun release` lays one out (metadata/ and
targets/, consistent snapshots), for wfrun's client to read.

Usage: publish.py DIR CHANNEL VERSION BUNDLE [--expired]

Writes DIR/metadata/{1.root.json,root.json,1.targets.json,1.snapshot.json,
timestamp.json} and DIR/targets/... with BUNDLE as the target
bundles/CHANNEL/VERSION/NAME and a release document as releases/CHANNEL.json.
--expired dates the timestamp an hour in the past.
"""
import hashlib
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import MetaFile, Metadata, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer


def main() -> int:
    out, channel, version, bundle = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    expired = "--expired" in sys.argv[5:]
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    week = now + timedelta(days=7)
    signers = {role: CryptoSigner.generate_ed25519() for role in ("root", "targets", "snapshot", "timestamp")}
    root = Root(expires=week, consistent_snapshot=True)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)

    def target(name: str, data: bytes, kind: str) -> TargetFile:
        file = TargetFile.from_data(name, data, ["sha256"])
        file.unrecognized_fields["custom"] = {"wfrun": {"kind": kind, "channel": channel, "version": version}}
        directory, _, base = name.rpartition("/")
        path = out / "targets" / directory / f"{hashlib.sha256(data).hexdigest()}.{base}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return file

    data = bundle.read_bytes()
    bundle_target = f"bundles/{channel}/{version}/{bundle.name}"
    document = {
        "format": 1,
        "channel": channel,
        "version": version,
        "bundles": [{"name": bundle.name, "target": bundle_target, "length": len(data),
                     "digest": "sha256:" + hashlib.sha256(data).hexdigest()}],
        "jobs": {},
        "ring": 0,
        "rollback_approved": False,
    }
    document_bytes = json.dumps(document, indent=2).encode()
    targets = Targets(expires=week)
    targets.targets[bundle_target] = target(bundle_target, data, "bundle")
    targets.targets[f"releases/{channel}.json"] = target(f"releases/{channel}.json", document_bytes, "release")

    def write(metadata: Metadata, name: str) -> bytes:
        metadata.sign(signers[metadata.signed.type], append=False)
        data = metadata.to_bytes(JSONSerializer(compact=False))
        (out / "metadata" / name).write_bytes(data)
        return data

    root_metadata = Metadata(root)
    write(root_metadata, "1.root.json")
    write(root_metadata, "root.json")
    write(Metadata(targets), "1.targets.json")
    snapshot = Snapshot(expires=week)
    snapshot.meta["targets.json"] = MetaFile(version=targets.version)
    write(Metadata(snapshot), "1.snapshot.json")
    timestamp = Timestamp(expires=now - timedelta(hours=1) if expired else now + timedelta(days=1))
    timestamp.snapshot_meta = MetaFile(version=snapshot.version)
    write(Metadata(timestamp), "timestamp.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
