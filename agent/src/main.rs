//! The `windlass` binary: parses the command line and hands off to the library.

mod cli;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match cli::Cli::parse().command {
        cli::Command::Version => {
            println!("windlass {}", env!("CARGO_PKG_VERSION"));
            println!(
                "ebpf: tc_counter.bpf.o ({} bytes)",
                windlass::ebpf::objects::TC_COUNTER.len()
            );
        }
    }
    Ok(())
}
