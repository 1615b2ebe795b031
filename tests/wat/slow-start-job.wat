;; A WASI command slow to instantiate but quiet: its core module's start
;; function counts to two million (milliseconds of work) and calls no import.
;; The daemon makes such a program's next instance ahead of its run.
(component
  (core module $m
    (global $count (mut i32) (i32.const 0))
    (func $start
      (loop $more
        (global.set $count (i32.add (global.get $count) (i32.const 1)))
        (br_if $more (i32.lt_u (global.get $count) (i32.const 2000000)))))
    (start $start)
    (func (export "run") (result i32) (i32.const 0)))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli)))
