"""Helpers for wfrun nodes written in Python (built with componentize-py).

Import it beside the bindings componentize-py generates from host-api/wit
(`wit_world`); examples/build-polyglot.sh copies this file next to the app.

    import wfrun_sdk
    wfrun_sdk.counter("rows", len(rows))
    wfrun_sdk.gauge("mean", mean)

Metrics are kept with the run (`wfrun runs show`), in the `--json` report
and in uploaded reports. A run keeps at most 64 names (1 to 64 of
`a-z A-Z 0-9 _ . -`); values must be finite and counter deltas at least 0.
A refused call records nothing: these helpers return False instead of
raising, since a metric should never fail a node.
"""

from componentize_py_types import Err
from wit_world.imports import metrics as _metrics


def gauge(name: str, value: float) -> bool:
    """Sets gauge `name` to `value`. False if the host refused it."""
    try:
        _metrics.gauge(name, float(value))
        return True
    except Err:
        return False


def counter(name: str, delta: float = 1.0) -> bool:
    """Adds `delta` (default 1) to counter `name`. False if the host refused it."""
    try:
        _metrics.counter(name, float(delta))
        return True
    except Err:
        return False
