//! How fast can this machine's CPU cores read memory? The denominator of issue 6's stretch
//! goal (decode reads at least 25% of the machine's read bandwidth), measured on the machine
//! at hand rather than assumed; `vlm-run bench` reports the same figure on CPU devices. Run:
//! `cargo run --release --example read_probe [MiB] [threads]` (default 512 MiB, one thread
//! per core, best of 10 passes; `ops::bandwidth::host_read_bandwidth`).
use vlm_run::ops::bandwidth::host_read_bandwidth_with;

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("usage: read_probe [MiB] [threads]"))?;
    let mib = args.first().copied().unwrap_or(512).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.get(1).copied().unwrap_or(cores).max(1);
    let bw = host_read_bandwidth_with(mib, 10, threads)?;
    println!(
        "{threads} thread(s) of {cores} core(s): {:.2} GB/s read ({mib} MiB, best of 10 passes)",
        bw / 1e9
    );
    Ok(())
}
