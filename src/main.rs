use clap::Parser;

// jemalloc: its size classes are naturally aligned, so the 128-byte-aligned allocations tokio
// makes per connection (task cell, socket registration) carry no alignment slack, which
// glibc adds to each one (measured in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
