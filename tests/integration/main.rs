//! wfrun's integration tests: one binary, several modules.
//!
//! Guest fixtures are built from source on first use (see [`guests`]): the
//! example guests in `examples/` and the misbehaving ones in `tests/guests/`.
//! Hostile guests that are easier to state in WAT live in `tests/wat/`.
//! `exec` drives the real `wfrun` binary; `sandbox` and `hostile` drive the
//! library; `workflow` does both, for packing, running and run history;
//! `egress` runs the `fetch` example against HTTP servers on 127.0.0.1;
//! `daemon` drives `wfrun daemon` as a process; `polyglot` runs the Python
//! and JavaScript nodes (built with their own toolchains on first use);
//! `runner` the trust flags, rejection records and the prepared-program
//! cache; `layers` checks the import rules of `docs/architecture.md`;
//! `releases` checks the repositories `wfrun release` writes with python-tuf;
//! `sync` runs the device's TUF client against both kinds of repository;
//! `rotation` rotates keys and plays the attacks of a key holder;
//! `fuzz_corpus` replays the saved fuzz inputs on stable;
//! `hardening` replays the attacks that once worked, one test each;
//! `durability` kills a process mid-transition of releases, again and again;
//! `reports` runs daemons against `wfrun fleet serve` (and a misbehaving
//! proxy in front of it) for the outbox, the uploader and heartbeats;
//! `remote` drives daemons over the TLS control API, `--wait` and profiles;
//! `services` keeps `always` jobs running through exits and crashes; `mcp`
//! drives `wfrun mcp` with JSON-RPC over its stdio; `outputs` writes, caps and
//! fetches runs' `/outputs`; `metrics` the guest `metrics` import from every SDK.

mod cache;
mod daemon;
mod durability;
mod egress;
mod exec;
mod fuzz_corpus;
mod guests;
mod hardening;
mod hostile;
mod layers;
mod mcp;
mod metrics;
mod outputs;
mod polyglot;
mod releases;
mod remote;
mod reports;
mod rotation;
mod runner;
mod sandbox;
mod services;
mod signing;
mod spares;
mod sync;
mod workflow;
