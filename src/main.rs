use clap::Parser;

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
