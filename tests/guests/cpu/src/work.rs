//! The CPU-bound work of the `cpu` guest, kept in its own file so that the
//! benchmark (`runtime/benches/exec.rs`) can build the very same code natively.

use std::collections::HashMap;

fn fib(n: u32) -> u64 {
    if n < 2 { n as u64 } else { fib(n - 1) + fib(n - 2) }
}

/// A sieve, a sort, a hash map and recursion, `n` times; returns a checksum.
pub fn work(n: u64) -> u64 {
    let mut checksum = 0u64;
    for round in 0..n {
        // Sieve of Eratosthenes up to 200k.
        let limit = 200_000;
        let mut composite = vec![false; limit + 1];
        let mut primes = 0u64;
        for i in 2..=limit {
            if !composite[i] {
                primes += 1;
                let mut j = i * i;
                while j <= limit {
                    composite[j] = true;
                    j += i;
                }
            }
        }
        // Sort 100k pseudo-random numbers.
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ round;
        let mut values: Vec<u64> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect();
        values.sort_unstable();
        // Count words in a hash map.
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for v in &values {
            *counts.entry(v % 5_000).or_default() += 1;
        }
        checksum = checksum
            .wrapping_add(primes)
            .wrapping_add(values[values.len() / 2])
            .wrapping_add(counts.len() as u64)
            .wrapping_add(fib(24));
    }
    checksum
}
