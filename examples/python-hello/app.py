"""The `hello` node in Python, built with componentize-py.

Input `{"name": "x"}` gives `{"greeting": "Hello, x!"}`. A missing name
greets `world`. The salutation comes from the node's `greeting` configuration
value when the host offers one (a workflow can set it), else `Hello`. It logs
`greeting <name>` at info level. Output is byte-for-byte what the Rust node
(examples/hello) prints: compact JSON, non-ASCII characters left as they are.

Build: examples/build-polyglot.sh python, which runs, in a copy of this
directory,
    componentize-py -d host-api/wit -w node componentize app -o examples/dist/python-hello.wasm
The node runs on the CPython that componentize-py embeds (3.14 for
componentize-py 0.25.1), not on the host's python3. stdout and stderr (print)
are captured with the run; log through `log.write`. It counts its greetings
in the metric `greetings` with guest-sdk/python/wfrun_sdk.py.
"""

import json

import wfrun_sdk
import wit_world
from componentize_py_types import Err
from wit_world.exports.handler import NodeError
from wit_world.imports import config, log


def _invalid_input(message: str) -> Err:
    return Err(NodeError(code="invalid-input", message=f"input does not match this node: {message}", retryable=False))


def _reject_constant(name: str):
    # json.loads accepts NaN and Infinity; JSON (and serde_json) does not.
    raise ValueError(f"{name} is not valid JSON")


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def _compact(value) -> str:
    # serde_json::to_string: no spaces, UTF-8 as is, the same escapes.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Handler(wit_world.exports.Handler):
    def run(self, input: str) -> str:
        try:
            data = json.loads(input, parse_constant=_reject_constant)
        except ValueError as e:
            raise _invalid_input(str(e))
        if not isinstance(data, dict):
            raise _invalid_input(f"expected an object, got {_json_type(data)}")
        name = data.get("name", "world")
        if not isinstance(name, str):
            raise _invalid_input(f"`name` must be a string, got {_compact(name)}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (`"\ud800"`) parses in Python but cannot cross
            # the component boundary as a string.
            raise _invalid_input("`name` is not valid Unicode (a lone surrogate)")

        # `config` is unavailable under a plain `wfrun exec`; fall back quietly.
        try:
            salutation = config.get("greeting")
        except Err:
            salutation = None
        if salutation is None:
            salutation = "Hello"
        log.write(log.Level.INFO, f"greeting {name}")
        wfrun_sdk.counter("greetings")
        return _compact({"greeting": f"{salutation}, {name}!"})
