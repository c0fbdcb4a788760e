//! The `quota` command line: `serve`, `migrate`, `admin …`, `ledger verify`, `payouts run`.
//!
//! Admin commands write to the database directly through [`crate::services::accounts`]' operator
//! functions (no server needed, and safe while one runs: a running server picks up their
//! transfers within its ledger tick).

use crate::app::{build_router, AppState};
use crate::config::Config;
use crate::services::accounts::{self, Email, Password};
use clap::{Parser, Subcommand};
use quota_core::Credits;
use quota_store::{clock::rfc3339, Store, StoreConfig};
use std::path::PathBuf;

/// Largest single admin credit: $1,000,000,000.
pub const ADMIN_CREDIT_MAX: Credits = Credits::new(1_000_000_000_000_000);

#[derive(Parser, Debug)]
#[command(name = "quota", version, about = "Quota: an AI API gateway with billing built in")]
pub struct Cli {
    /// Configuration file (default: ./quota.toml if present; QUOTA_* variables override it).
    #[arg(long, global = true, env = "QUOTA_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (migrates the database first).
    Serve {
        /// Port to listen on (0 picks a free one). Overrides QUOTA_PORT.
        #[arg(long)]
        port: Option<u16>,
        /// Address to bind. Overrides QUOTA_BIND.
        #[arg(long)]
        bind: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Operator commands.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Ledger commands.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Pay developers their earnings through Stripe Connect.
    Payouts {
        #[command(subcommand)]
        command: PayoutsCommand,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration (file, then QUOTA_* variables) as TOML, secrets masked.
    /// Exit 1 when it is invalid (an unknown key, a bad value), with the reason.
    Check,
}

#[derive(Subcommand, Debug)]
pub enum PayoutsCommand {
    /// Run the payout batch now (safe while a server runs it too: nothing is paid twice).
    Run {
        /// The batch of this UTC day (YYYY-MM-DD): earnings eligible by its end. Default: now.
        #[arg(long)]
        date: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Create an account (with its welcome credits). Prints a generated password if none given.
    CreateAccount {
        email: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Credit a wallet from the platform's adjustments account.
    Credit { email: String, credits: String },
    /// List accounts with their balances.
    ListAccounts,
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// Recompute every balance from the transfers and check that they add up to zero, that no
    /// wallet is negative and that every cached balance is right. Exit 1 on any mismatch.
    Verify {
        /// Print only the report as one JSON object (with `"ok": true|false`), for scripts.
        #[arg(long)]
        json: bool,
    },
}

fn init_tracing(config: &Config) -> anyhow::Result<crate::telemetry::Telemetry> {
    crate::telemetry::init(config).map_err(anyhow::Error::msg)
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    if let Some(file) = crate::files::sqlite_file(&config.database_url) {
        crate::files::prepare_sqlite_file(&file)
            .map_err(|e| anyhow::anyhow!("preparing the database file {}: {e}", file.display()))?;
    }
    let store = Store::open_and_migrate(&StoreConfig {
        database_url: config.database_url.clone(),
        synchronous: config.sqlite_synchronous.parse().map_err(anyhow::Error::msg)?,
        max_connections: 2,
    })
    .await?;
    Ok(store)
}

/// Run a parsed command line. Returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let command = match cli.command {
        Command::Config { command: ConfigCommand::Check } => return Ok(config_check(cli.config.as_deref())),
        other => other,
    };
    let mut config = Config::load(cli.config.as_deref()).map_err(anyhow::Error::msg)?;
    match command {
        Command::Serve { port, bind } => {
            if let Some(p) = port {
                config.port = p;
            }
            if let Some(b) = bind {
                config.bind = b;
            }
            let telemetry = init_tracing(&config)?;
            serve(config).await?;
            // The last spans are exported before the process exits.
            tokio::task::spawn_blocking(move || telemetry.shutdown()).await.ok();
            Ok(0)
        }
        Command::Migrate => {
            open_store(&config).await?;
            println!("migrations applied to {}", config.database_url);
            Ok(0)
        }
        Command::Admin { command } => admin(&config, command).await,
        Command::Config { .. } => Ok(config_check(cli.config.as_deref())),
        Command::Payouts { command: PayoutsCommand::Run { date } } => {
            let _telemetry = init_tracing(&config)?;
            // This process runs one batch, not the schedule.
            config.payouts_schedule = false;
            let state = AppState::start(config).await?;
            let now = state.clock.now_ms();
            let as_of = match date {
                Some(d) => crate::payments::payouts::as_of_for_date(&d, now).map_err(anyhow::Error::msg)?,
                None => now,
            };
            let report = crate::payments::payouts::run(&state, as_of).await?;
            state.ledger.flush().await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.errors == 0 { 0 } else { 1 })
        }
        Command::Ledger { command: LedgerCommand::Verify { json } } => {
            let store = open_store(&config).await?;
            let report = store.verify_ledger().await?;
            if json {
                let mut out = serde_json::to_value(&report)?;
                out["ok"] = serde_json::Value::Bool(report.ok());
                println!("{out}");
                return Ok(if report.ok() { 0 } else { 1 });
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.ok() {
                println!(
                    "ledger OK: {} transfers, {} accounts, sum of balances = 0",
                    report.transfers, report.accounts
                );
                Ok(0)
            } else {
                eprintln!("ledger verification FAILED");
                Ok(1)
            }
        }
    }
}

/// `quota config check`: the effective configuration, masked, on stdout; exit 0, or 1 with the
/// reason on stderr.
fn config_check(file: Option<&std::path::Path>) -> i32 {
    match Config::load(file).and_then(|c| crate::config::masked_toml(&c)) {
        Ok(text) => {
            println!("# the effective configuration (secrets masked)\n{text}");
            0
        }
        Err(e) => {
            eprintln!("configuration invalid: {e}");
            1
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = format!("{}:{}", config.bind, config.port);
    let listener =
        tokio::net::TcpListener::bind(&addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let state = AppState::start(config).await?;
    let app = build_router(state.clone());
    let shown = if local.ip().is_unspecified() { format!("127.0.0.1:{}", local.port()) } else { local.to_string() };
    tracing::info!(address = %local, database = %state.config.database_url, "Quota listening");
    println!("Quota listening on http://{shown} (database {})", state.config.database_url);
    use axum::serve::ListenerExt;
    // TCP_NODELAY: a response written in two pieces must not wait for the peer's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("shutting down: in-flight requests finished; flushing the ledger");
    state.ledger.flush().await.ok();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn admin(config: &Config, command: AdminCommand) -> anyhow::Result<i32> {
    let store = open_store(config).await?;
    match command {
        AdminCommand::CreateAccount { email, password } => {
            let email = Email::parse(&email).map_err(|e| anyhow::anyhow!(e.message))?;
            let generated = password.is_none();
            let password = password.unwrap_or_else(|| quota_core::ids::new_secret(""));
            let parsed = Password::parse(&password).map_err(|e| anyhow::anyhow!(e.message))?;
            let user = accounts::create_offline(&store, &email, &parsed, config.welcome_credits).await?;
            println!(
                "created account {} ({}) with {} welcome credits",
                user.id,
                email.as_str(),
                config.welcome_credits
            );
            if generated {
                println!("password: {password}");
            }
            Ok(0)
        }
        AdminCommand::Credit { email, credits } => {
            let amount = Credits::parse_positive(&credits, ADMIN_CREDIT_MAX).map_err(anyhow::Error::msg)?;
            let balance = accounts::admin_credit(&store, &email, amount).await?;
            let email = email.trim().to_lowercase();
            println!("credited {amount} credits ({}) to {email}; balance {balance}", amount.to_usd_string());
            Ok(0)
        }
        AdminCommand::ListAccounts => {
            println!("{:<28} {:<40} {:>18} created", "id", "email", "balance");
            for (user, balance) in accounts::list_with_balances(&store).await? {
                println!("{:<28} {:<40} {:>18} {}", user.id, user.email, balance, rfc3339(user.created_at));
            }
            Ok(0)
        }
    }
}
