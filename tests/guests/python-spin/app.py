"""A Python node that never returns: proves that wfrun stops Python guests
with the same limits (timeout, fuel) and codes as Rust ones. Built by the
integration tests (tests/integration/guests.rs) with componentize-py."""

from wit_world import exports


class Handler(exports.Handler):
    def run(self, input: str) -> str:
        n = 0
        while True:
            n += 1
