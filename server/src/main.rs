use clap::Parser;
use mercator_server::config::{Cli, Command, FeaturesCommand};
use mercator_server::{App, Config};
use tracing_subscriber::EnvFilter;

/// glibc's malloc contends between threads under load (seen in perf: ~15% of the server's cycles).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Features(FeaturesCommand::Materialize {
            spec,
            input,
            output,
        }) => materialize(&spec, &input, &output),
        Command::Features(FeaturesCommand::Profile {
            model,
            input,
            from,
            to,
            bins,
            output,
        }) => profile(
            &mercator_services::monitor::reference::Request {
                version_dir: &model,
                input: &input,
                from,
                to,
                bins: bins.clamp(2, 1000),
            },
            output.unwrap_or_else(|| model.join(mercator_engine::PROFILE_FILE)),
        ),
        Command::Features(FeaturesCommand::DeliveryFrame {
            spec,
            orders,
            deliveries,
            materials,
            end,
            output,
        }) => delivery_frame(&spec, [&orders, &deliveries, &materials], end, &output),
        Command::Features(FeaturesCommand::DemandFrame {
            spec,
            orders,
            end,
            every,
            output,
        }) => demand_frame(&spec, &orders, end, every, &output),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("mercator: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn profile(
    request: &mercator_services::monitor::reference::Request,
    output: std::path::PathBuf,
) -> Result<(), String> {
    let runtime = mercator_engine::Runtime::load(None).map_err(|e| e.to_string())?;
    let profile = mercator_services::monitor::reference::build(&runtime, request)?;
    let mut json = serde_json::to_string_pretty(&profile).map_err(|e| e.to_string())?;
    json.push('\n');
    std::fs::write(&output, json).map_err(|e| format!("{}: {e}", output.display()))?;
    println!(
        "{}: {} columns -> {}",
        profile.source,
        profile.columns.len(),
        output.display()
    );
    Ok(())
}

fn materialize(
    spec: &std::path::Path,
    input: &std::path::Path,
    output: &std::path::Path,
) -> Result<(), String> {
    use mercator_features::{materialize, FeatureSpec};
    let started = std::time::Instant::now();
    let spec = FeatureSpec::from_file(spec).map_err(|e| e.to_string())?;
    let mut m = materialize::materialize(&spec, input).map_err(|e| e.to_string())?;
    materialize::write(&mut m.frame, output).map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} rows in, {} rows out, dropped {:?}; {:.2} s, {:.0} input rows/s -> {}",
        m.rows_in,
        m.frame.height(),
        m.dropped,
        seconds,
        m.rows_in as f64 / seconds,
        output.display()
    );
    Ok(())
}

fn delivery_frame(
    spec: &std::path::Path,
    [orders, deliveries, materials]: [&std::path::Path; 3],
    end: chrono::NaiveDate,
    output: &std::path::Path,
) -> Result<(), String> {
    use mercator_features::delivery;
    let spec = delivery::DeliverySpec::from_file(spec).map_err(|e| e.to_string())?;
    let end = mercator_features::day_of(end);
    let frame =
        delivery::frame(&spec, orders, deliveries, materials, end).map_err(|e| e.to_string())?;
    delivery::write_frame(&frame, output).map_err(|e| e.to_string())?;
    let late = frame.rows.iter().filter(|r| r.late).count();
    println!(
        "{} labelled lines ({late} late) -> {}",
        frame.rows.len(),
        output.display()
    );
    Ok(())
}

fn demand_frame(
    spec: &std::path::Path,
    orders: &std::path::Path,
    end: chrono::NaiveDate,
    every: u32,
    output: &std::path::Path,
) -> Result<(), String> {
    use mercator_features::demand;
    let spec = demand::DemandSpec::from_file(spec).map_err(|e| e.to_string())?;
    let frame = demand::frame(&spec, orders, mercator_features::day_of(end), every)
        .map_err(|e| e.to_string())?;
    demand::write_frame(&frame, output).map_err(|e| e.to_string())?;
    println!("{} rows -> {}", frame.rows.len(), output.display());
    Ok(())
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
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, "ready");
        if let Some(demo) = &app.demo {
            eprintln!("{}", demo_banner(demo, addr));
        }
        app.serve(listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

/// What to try next, on the terminal (not in the structured log: it holds a key).
fn demo_banner(demo: &mercator_services::demo::Loaded, addr: std::net::SocketAddr) -> String {
    let loaded = match demo.prices_loaded {
        0 => "already loaded".to_string(),
        n => format!("{n} prices loaded now"),
    };
    let try_it = r#"
    export MERCATOR=http://ADDR KEY=$(cat FILE)
    MATERIAL=$(curl -fsS "$MERCATOR/api/v1/materials?q=ALU-001" -H "authorization: Bearer $KEY" | jq -r '.items[0].id')
    curl -fsS "$MERCATOR/api/v1/predictions/price" -H "authorization: Bearer $KEY" \
      --json '{"material_id": "'"$MATERIAL"'", "quantity": 500}'
"#
    .replace("ADDR", &addr.to_string())
    .replace("FILE", &demo.key_file.display().to_string());
    format!(
        "\n  The demo organization is ready ({loaded}): {} materials, {} suppliers, prices up to {}.\n  \
         Its analyst key, also in {}:\n\n    {}\n\n  Try:\n{try_it}\n  More in the README (\"Try it in five \
         minutes\"); the API reference is at http://{addr}/docs\n",
        demo.materials,
        demo.suppliers,
        demo.last_day,
        demo.key_file.display(),
        demo.key,
    )
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
