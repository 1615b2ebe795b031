// A JavaScript node that never returns: proves that wfrun stops JavaScript
// guests with the same limits (timeout, fuel) and codes as Rust ones. Built by
// the integration tests (tests/integration/guests.rs) with componentize-js.

function run(input) {
  let n = 0;
  for (;;) {
    n += 1;
  }
}

export const handler = { run };
