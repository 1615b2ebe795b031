// Helpers for wfrun nodes written in JavaScript (built with componentize-js).
//
//   import { counter, gauge } from "../../guest-sdk/js/wfrun-sdk.js";
//   counter("rows", rows.length);
//   gauge("mean", mean);
//
// Metrics are kept with the run (`wfrun runs show`), in the `--json` report
// and in uploaded reports. A run keeps at most 64 names (1 to 64 of
// `a-z A-Z 0-9 _ . -`); values must be finite and counter deltas at least 0.
// A refused call records nothing: these helpers return false instead of
// throwing, since a metric should never fail a node.

import { counter as rawCounter, gauge as rawGauge } from "wfrun:node/metrics@0.1.0";

/** Sets gauge `name` to `value`. False if the host refused it. */
export function gauge(name, value) {
  try {
    rawGauge(name, Number(value));
    return true;
  } catch {
    return false;
  }
}

/** Adds `delta` (default 1) to counter `name`. False if the host refused it. */
export function counter(name, delta = 1) {
  try {
    rawCounter(name, Number(delta));
    return true;
  } catch {
    return false;
  }
}
