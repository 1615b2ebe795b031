;; A WASI command that grows its memory a page at a time until told no.
(component
  (core module $m
    (memory 1)
    (func (export "run") (result i32)
      (loop $more
        (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
      (i32.const 0)))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli)))
