// The `hello` node in JavaScript, built into a component with componentize-js.
//
// Input `{"name": "x"}` gives `{"greeting": "Hello, x!"}`. A missing name
// greets `world`. The salutation comes from the node's `greeting`
// configuration value when the host offers one (a workflow can set it), else
// `Hello`. It logs `greeting <name>` at info level. Output is byte-for-byte
// what the Rust node (examples/hello) prints: JSON.stringify is compact and
// escapes exactly as serde_json does for well-formed strings.
//
// Build: examples/build-polyglot.sh js, which runs, in a copy of this file
// beside guest-sdk/js/wfrun-sdk.js,
//   componentize-js hello.js --wit host-api/wit --world-name node \
//     --disable stdio http fetch-event -o examples/dist/js-hello.wasm
// With stdio disabled, console.log goes nowhere: log through `write`. It
// counts its greetings in the metric `greetings` (guest-sdk/js/wfrun-sdk.js).

import { write } from "wfrun:node/log@0.1.0";
import { get as configGet } from "wfrun:node/config@0.1.0";
// guest-sdk/js/wfrun-sdk.js, copied beside this file by build-polyglot.sh.
import { counter } from "./wfrun-sdk.js";

// Throwing a plain object (not an Error) returns it as the `err` case of
// `result<string, node-error>`; throwing an Error would trap.
function invalidInput(message) {
  return { code: "invalid-input", message: `input does not match this node: ${message}`, retryable: false };
}

function jsonType(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value === "object" ? "object" : typeof value;
}

function run(input) {
  let data;
  try {
    data = JSON.parse(input);
  } catch (e) {
    throw invalidInput(String(e && e.message ? e.message : e));
  }
  if (jsonType(data) !== "object") {
    throw invalidInput(`expected an object, got ${jsonType(data)}`);
  }
  const name = Object.prototype.hasOwnProperty.call(data, "name") ? data.name : "world";
  if (typeof name !== "string") {
    throw invalidInput(`\`name\` must be a string, got ${JSON.stringify(name)}`);
  }
  if (!name.isWellFormed()) {
    // `"\ud800"` parses, but a lone surrogate is not a string the Rust node accepts.
    throw invalidInput("`name` is not valid Unicode (a lone surrogate)");
  }

  // `config` is unavailable under a plain `wfrun exec`; fall back quietly.
  // A `result` error arrives as a thrown exception.
  let salutation;
  try {
    salutation = configGet("greeting");
  } catch {
    salutation = undefined;
  }
  if (salutation === undefined || salutation === null) salutation = "Hello";
  write("info", `greeting ${name}`);
  counter("greetings");
  return JSON.stringify({ greeting: `${salutation}, ${name}!` });
}

export const handler = { run };
