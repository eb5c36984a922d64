//! Runs every fuzz target for a bounded time (`XPUPOOL_FUZZ_SECONDS` each, 10 by
//! default; a name on the command line runs only the targets it matches) and
//! fails on a panic, an allocation past the target's bound, or an input that runs
//! past `XPUPOOL_FUZZ_INPUT_SECONDS` (5). A failing input is written to
//! `target/fuzz-failures/` (or `$XPUPOOL_FUZZ_FAILURES`) to replay: a path on the
//! command line runs that one file through every target.
//!
//! `XPUPOOL_FUZZ_WRITE_CORPUS=1` (re)writes the committed seeds in
//! `fuzz/corpus/` from `xpupool_fuzz::seeds` and exits.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xpupool_fuzz::{corpus_dirs, load_corpus, seeds, Mutator, State, TARGETS};

/// Counts what the fuzzed code allocates: the largest single allocation and the
/// peak of live bytes since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters
// are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded as given.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded as given.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        note(new_size);
        // SAFETY: forwarded as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
    LARGEST.fetch_max(size, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

fn seconds(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What went wrong with one input, if anything.
fn check_one(
    run: fn(&mut State, &[u8]),
    bound: usize,
    state: &mut State,
    input: &[u8],
) -> Option<String> {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(state, input)));
    let largest = LARGEST.load(Ordering::Relaxed);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    if outcome.is_err() {
        return Some("panicked".to_owned());
    }
    if largest > bound || peak > bound {
        return Some(format!(
            "allocated {largest} bytes at once, {peak} at the peak, for {} input bytes (bound {bound})",
            input.len()
        ));
    }
    None
}

fn save(target: &str, input: &[u8]) -> PathBuf {
    use sha2::Digest;
    let dir = std::env::var_os("XPUPOOL_FUZZ_FAILURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/fuzz-failures"));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!(
        "{target}-{}",
        &hex::encode(sha2::Sha256::digest(input))[..16]
    ));
    let _ = std::fs::write(&path, input);
    path
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if std::env::var_os("XPUPOOL_FUZZ_WRITE_CORPUS").is_some() {
        for target in TARGETS {
            let dir = root().join("fuzz/corpus").join(target.name);
            for (name, bytes) in seeds(target.name) {
                std::fs::create_dir_all(&dir).expect("corpus folder");
                std::fs::write(dir.join(format!("{name}.bin")), bytes).expect("a seed");
            }
        }
        println!("seeds written under fuzz/corpus/");
        return;
    }
    // A saved failure, replayed through every target.
    if let Some(file) = args.iter().find(|a| Path::new(a).is_file()) {
        let input = std::fs::read(file).expect("readable");
        for target in TARGETS {
            let verdict = check_one(
                target.run,
                (target.bound)(input.len()),
                &mut State::new(),
                &input,
            );
            println!("{}: {}", target.name, verdict.as_deref().unwrap_or("ok"));
        }
        return;
    }
    // Panics are caught and counted; their messages would only bury the summary.
    std::panic::set_hook(Box::new(|_| {}));
    let budget = Duration::from_secs_f64(seconds("XPUPOOL_FUZZ_SECONDS", 10.0));
    let input_limit = Duration::from_secs_f64(seconds("XPUPOOL_FUZZ_INPUT_SECONDS", 5.0));
    // The watchdog: an input still running past its limit is written out and the
    // run fails (the loop it is in may never end).
    let current: Arc<Mutex<(String, Vec<u8>)>> = Arc::default();
    // When the running input started, in milliseconds after `epoch`, plus one;
    // 0 while none runs. One word, so the watchdog never pairs one input's start
    // with another's running (a first input after a slow corpus load looked
    // like one that had run since the epoch).
    let started = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    {
        let (current, started) = (current.clone(), started.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let start = started.load(Ordering::Acquire);
            let since = (epoch.elapsed().as_millis() as u64 + 1).saturating_sub(start);
            if start != 0 && since > input_limit.as_millis() as u64 {
                let (target, input) = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let path = save(&target, &input);
                println!(
                    "FAIL  {target}: an input ran past {input_limit:?} (saved as {})",
                    path.display()
                );
                println!("fuzz: 0 passed, 1 failed");
                std::process::exit(1);
            }
        });
    }
    let seed = std::env::var("XPUPOOL_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| epoch.elapsed().as_nanos() as u64 ^ u64::from(std::process::id()));
    let (mut passed, mut failed) = (0, 0);
    for target in TARGETS {
        if !args.is_empty() && !args.iter().any(|a| target.name.contains(a.as_str())) {
            continue;
        }
        let corpus = load_corpus(&corpus_dirs(&root(), target.name), target.name);
        if corpus.is_empty() {
            println!("FAIL  {}: no corpus", target.name);
            failed += 1;
            continue;
        }
        let mut mutator = Mutator::new(seed ^ target.name.len() as u64);
        let mut state = State::new();
        let mut runs = 0u64;
        let mut failure = None;
        let began = Instant::now();
        // Every seed as it is first, then mutations of them.
        while failure.is_none() && (runs < corpus.len() as u64 || began.elapsed() < budget) {
            let input = if (runs as usize) < corpus.len() {
                corpus[runs as usize].clone()
            } else {
                let base = &corpus[mutator.pick(corpus.len())];
                mutator.mutate(base, &corpus)
            };
            *current.lock().unwrap_or_else(|e| e.into_inner()) =
                (target.name.to_owned(), input.clone());
            started.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Release);
            let verdict = check_one(target.run, (target.bound)(input.len()), &mut state, &input);
            started.store(0, Ordering::Release);
            runs += 1;
            if let Some(why) = verdict {
                failure = Some((why, save(target.name, &input)));
            }
        }
        match failure {
            None => {
                passed += 1;
                println!(
                    "ok    {}: {runs} inputs in {:.1} s from {} seeds, no panic, allocations within bounds",
                    target.name,
                    began.elapsed().as_secs_f64(),
                    corpus.len()
                );
            }
            Some((why, path)) => {
                failed += 1;
                println!(
                    "FAIL  {}: {why} (input saved as {})",
                    target.name,
                    path.display()
                );
            }
        }
    }
    println!("(mutation seed {seed}: XPUPOOL_FUZZ_SEED={seed} repeats this run)");
    println!("fuzz: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
