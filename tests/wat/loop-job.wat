;; A WASI command whose `run` never returns: caught by fuel or by the timeout.
(component
  (core module $m
    (func (export "run") (result i32)
      (loop $forever (br $forever))
      (i32.const 0)))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli)))
