;; A WASI command whose instantiation calls the host: its core module's start
;; function reads the monotonic clock. A sandbox must never make such a
;; program's instance ahead of its run (the `spare` module), since the
;; instantiation would see no run's context.
(component
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (export "now" (func (result u64)))))
  (core func $now (canon lower (func $clock "now")))
  (core module $m
    (import "clock" "now" (func $now (result i64)))
    (global $started (mut i64) (i64.const 0))
    (func $start (global.set $started (call $now)))
    (start $start)
    (func (export "run") (result i32) (i32.const 0)))
  (core instance $i (instantiate $m (with "clock" (instance (export "now" (func $now))))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli)))
