//! The `quota` binary.

use clap::Parser;

/// mimalloc instead of glibc's malloc: the request path allocates and frees many small
/// buffers (headers, JSON, SSE frames) across threads, where glibc's arenas spent ~12 % of the
/// runtime threads' CPU in the bench's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
