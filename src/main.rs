use clap::Parser;

// jemalloc: its size classes are naturally aligned, so the 128-byte-aligned allocations tokio
// makes per connection (task cell, socket registration) carry no alignment slack, which
// glibc adds to each one (measured in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// Give freed pages back at once. Each interval allocates and frees a few histogram sets (about
// 1 MB each, mostly untouched); with jemalloc's default 10 s decay, those freed pages stayed
// resident and came to about 3.6 MB of a 200-connection run's 9 MB of anonymous memory.
// Purged pages also come back zeroed, so a new histogram costs only the buckets it records.
// The symbol carries tikv-jemalloc-sys's `_rjem_` prefix; `_RJEM_MALLOC_CONF` still overrides.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: MallocConf = MallocConf(c"dirty_decay_ms:0,muzzy_decay_ms:0".as_ptr());

/// jemalloc reads `malloc_conf` as a `const char *`: a thin pointer to a C string.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points at a string literal, which is immutable and lives for the whole program.
unsafe impl Sync for MallocConf {}

fn main() {
    let cli = stampede::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("stampede-control")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("stampede: cannot start the runtime: {e}");
            std::process::exit(3);
        }
    };
    let code = runtime.block_on(stampede::cli::main(cli));
    // Connections still held by the embedded sink are dropped with the runtime.
    runtime.shutdown_background();
    std::process::exit(code);
}
