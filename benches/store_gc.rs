//! GC at scale with a concurrent writer: 1,000,000 blobs and 100,000 manifests (each a
//! config and eight layers), 30% of them untagged. Targets: GC ≤ 10 s, writer stall
//! ≤ 100 ms. Prints both, the writer's latency without GC measured in the same run (the
//! baseline), and peak memory.
//!
//! `cargo bench --bench store_gc`; sizes: KILN_BENCH_GC_MANIFESTS (100000; blobs are ten
//! per manifest), KILN_BENCH_GC_BATCH (1024). `RUST_LOG=kiln::store=debug` also prints the
//! GC's phases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test stops where it fails

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kiln::oci::digest::Digest;
use kiln::oci::name::Reference;
use kiln::store::bench_support::{Item, load};
use kiln::store::fixtures::image_manifest;
use kiln::store::{GcOptions, GcReport, Store, StoreOptions};

/// Pushes one small image per call, as a build would; returns each push's latency.
fn writer(store: Store, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let layer = format!("writer layer {n} {:?}", Instant::now());
        let layer = store
            .put_blob(
                "bench/writer",
                Digest::of(layer.as_bytes()),
                layer.as_bytes(),
            )
            .unwrap();
        let body = image_manifest((layer.digest, layer.size), &[]);
        store
            .put_manifest(
                "bench/writer",
                &Reference::tag(&format!("t{}", n % 100)).expect("a valid tag"),
                "",
                &body,
            )
            .unwrap();
        latencies.push(started.elapsed());
        n += 1;
    }
    latencies
}

fn stats(latencies: &mut [Duration]) -> (Duration, Duration, usize) {
    latencies.sort();
    let max = latencies.last().copied().unwrap_or_default();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    (max, p99, latencies.len())
}

fn main() {
    // `RUST_LOG=kiln::store=debug` shows the GC's phases.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let manifests = common::size("KILN_BENCH_GC_MANIFESTS", 100_000, 200) as usize;
    let batch = common::size("KILN_BENCH_GC_BATCH", 1024, 64) as usize;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let loaded = fill(&store, manifests);
    let mut alone = writer_alone(&store);
    let peak_is_gc = common::reset_peak_rss();
    let (report, gc_time, mut during) = gc_beside_writer(&store, batch);
    println!(
        "store_gc: {} blobs, {manifests} manifests (loaded in {:.1}s), batch {batch}{}",
        manifests * 10,
        loaded.as_secs_f64(),
        if common::full_run() {
            ""
        } else {
            "  [smoke run]"
        }
    );
    print_results(&report, gc_time, &mut alone, &mut during, peak_is_gc);
    assert_eq!(
        report.manifests_removed as usize,
        manifests - manifests * 7 / 10
    );
}

/// Loads `manifests` images of a config and eight layers each, 70% of them tagged, all
/// last used a day ago; returns how long it took.
fn fill(store: &Store, manifests: usize) -> Duration {
    let load_started = Instant::now();
    let day_ago = store.clock().now_ms() - 86_400_000;
    let mut items = Vec::with_capacity(10_000);
    for m in 0..manifests {
        let mut blob = |kind: &str, i: usize| {
            let bytes = format!("{kind} {m} {i}").into_bytes();
            let descriptor = (Digest::of(&bytes), bytes.len() as u64);
            items.push(Item {
                bytes,
                manifest: false,
                tag: None,
            });
            descriptor
        };
        let config = blob("config", 0);
        let layers: Vec<_> = (0..8).map(|i| blob("layer", i)).collect();
        items.push(Item {
            bytes: image_manifest(config, &layers),
            manifest: true,
            tag: (m % 10 >= 3).then(|| format!("m{m}")),
        });
        if items.len() >= 10_000 {
            load(store, "bench/gc", &items, day_ago, 10_000).unwrap();
            items.clear();
        }
    }
    load(store, "bench/gc", &items, day_ago, 10_000).unwrap();
    let loaded = load_started.elapsed();
    // The loader writes without fsync: flush it all now, so that the GC runs on a store at
    // rest instead of racing the kernel's writeback of a million new files.
    // (Not in the smoke run under `cargo test`: it would flush the whole machine.)
    if common::full_run() {
        let flushed = std::process::Command::new("sync").status();
        if !flushed.as_ref().is_ok_and(|status| status.success()) {
            eprintln!("store_gc: `sync` failed ({flushed:?}); the GC may race writeback");
        }
    }
    loaded
}

/// The baseline: the writer's push latencies with nothing else running.
fn writer_alone(store: &Store) -> Vec<Duration> {
    let stop = Arc::new(AtomicBool::new(false));
    let alone = {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        std::thread::spawn(move || writer(store, stop))
    };
    std::thread::sleep(Duration::from_secs(if common::full_run() { 3 } else { 1 }));
    stop.store(true, Ordering::Relaxed);
    alone.join().unwrap()
}

/// One GC run with the writer pushing throughout: its report, its time, and the writer's
/// push latencies meanwhile.
fn gc_beside_writer(store: &Store, batch: usize) -> (GcReport, Duration, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let during = {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        std::thread::spawn(move || writer(store, stop))
    };
    let started = Instant::now();
    let report = store
        .gc(&GcOptions {
            batch,
            ..GcOptions::default()
        })
        .unwrap();
    let gc_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    (report, gc_time, during.join().unwrap())
}

/// Prints the GC's phases, the writer's stalls against its baseline, and peak memory.
fn print_results(
    report: &GcReport,
    gc_time: Duration,
    alone: &mut [Duration],
    during: &mut [Duration],
    peak_is_gc: bool,
) {
    let (alone_max, alone_p99, alone_n) = stats(alone);
    let (max, p99, n) = stats(during);
    println!(
        "  gc: {:.2}s (target ≤ 10s): mark {} ms, sweep {} ms ({} ms in write transactions, {} ms waiting for unlinks); removed {} blobs ({} manifests), kept {} for concurrent writes",
        gc_time.as_secs_f64(),
        report.mark_ms,
        report.sweep_ms,
        report.sweep_writes_ms,
        report.unlink_wait_ms,
        report.blobs_removed,
        report.manifests_removed,
        report.kept_by_concurrent_writes
    );
    println!(
        "  writer alone:  {alone_n} pushes, p99 {:.1} ms, max {:.1} ms",
        alone_p99.as_secs_f64() * 1e3,
        alone_max.as_secs_f64() * 1e3
    );
    println!(
        "  writer in gc:  {n} pushes, p99 {:.1} ms, max stall {:.1} ms (target ≤ 100 ms), {:.1}× the writer alone",
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        max.as_secs_f64() / alone_max.as_secs_f64().max(1e-9)
    );
    if let Some(rss) = common::peak_rss() {
        println!(
            "  peak RSS{}: {:.0} MiB",
            if peak_is_gc {
                " during gc (store opened and loaded before)"
            } else {
                " of the whole run"
            },
            rss as f64 / f64::from(1 << 20)
        );
    }
}
