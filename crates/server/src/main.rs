//! The `quota` binary.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = quota_server::cli::Cli::parse();
    match quota_server::cli::run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
