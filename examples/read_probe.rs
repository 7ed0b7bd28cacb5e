//! How fast can this machine's CPU cores read memory? The denominator of issue 6's stretch
//! goal (decode reads at least 25% of the machine's read bandwidth), measured on the machine
//! at hand rather than assumed. Run: `cargo run --release --example read_probe [MiB] [threads]`
//! (default 512 MiB, one thread per core, best of 10).
//!
//! Each thread sums its own contiguous slice of a u64 array with eight independent
//! accumulators, so that the loop is bound by loads, not by one add chain. Best of 10 passes.
use std::time::Instant;

fn sum_slice(s: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = s.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*v);
        }
    }
    let tail = rest.iter().fold(0u64, |t, v| t.wrapping_add(*v));
    acc.iter().fold(tail, |t, v| t.wrapping_add(*v))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("usage: read_probe [MiB] [threads]"))?;
    let mib = args.first().copied().unwrap_or(512).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.get(1).copied().unwrap_or(cores).max(1);
    let words = mib * 1024 * 1024 / 8;
    // written, so that every page is backed before the timing
    let data: Vec<u64> = (0..words as u64).map(|i| i & 7).collect();
    let per = words.div_ceil(threads);
    let mut best = f64::MAX;
    let mut check = 0u64;
    for _ in 0..10 {
        let t = Instant::now();
        check = std::thread::scope(|sc| {
            let hs: Vec<_> = data
                .chunks(per)
                .map(|s| sc.spawn(move || sum_slice(s)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("a reader thread panicked"))
                .fold(0u64, u64::wrapping_add)
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    // the sum of i & 7 over the array, so that the reads cannot be optimized away
    let expect = (0..words as u64).fold(0u64, |t, i| t.wrapping_add(i & 7));
    anyhow::ensure!(check == expect, "sum {check} != {expect}");
    println!(
        "{threads} thread(s) of {cores} core(s): {:.2} GB/s read ({mib} MiB, best of 10 passes)",
        (words * 8) as f64 / best / 1e9
    );
    Ok(())
}
