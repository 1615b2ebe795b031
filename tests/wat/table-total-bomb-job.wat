;; Two tables of 60,000 elements: each fits the element limit, together they do not.
(component
  (core module $m
    (table 60000 funcref)
    (table 60000 funcref)
    (func (export "run") (result i32) (i32.const 0)))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli)))
