use clap::Parser;
use mercator_server::config::{Cli, Command};
use mercator_server::{App, Config};
use tracing_subscriber::EnvFilter;

/// glibc's malloc contends between threads under load (seen in perf: ~15% of the server's cycles).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve(args) => match serve(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("mercator: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

fn serve(args: mercator_server::config::ServeArgs) -> Result<(), String> {
    let config = Config::resolve(args)?;
    tracing::info!(?config, "starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|e| format!("cannot listen on {} (--addr): {e}", config.addr))?;
        let app = App::load(config).await?;
        tracing::info!(addr = %listener.local_addr().map_err(|e| e.to_string())?, "ready");
        app.serve(listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = interrupt => {},
        _ = terminate.recv() => {},
    }
}

/// Plain text by default; JSON lines when MERCATOR_LOG_FORMAT=json. Filter with RUST_LOG (default: info).
fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("MERCATOR_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
