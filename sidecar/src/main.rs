//! mcpgw-sidecar: discovers the upstream MCP servers of the gateway, serves the plugin's
//! configuration document (long poll), the clients' notification stream, and Envoy xDS files.
//!
//! ```text
//! mcpgw-sidecar run --config sidecar.yaml
//! mcpgw-sidecar bootstrap --config sidecar.yaml [--out envoy.json] [--no-wasm]
//! mcpgw-sidecar check --config sidecar.yaml
//! ```

mod catalog;
mod discovery;
mod engine;
mod http;
#[cfg(feature = "kube")]
mod k8s;
mod metrics;
mod settings;
mod streams;
mod watch;
mod xds;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const USAGE: &str = "\
usage:
  mcpgw-sidecar run --config FILE [--kube-gateway NAMESPACE/NAME]
      serve /v1/config (plugin long poll), GET <mcp_path> (client notifications), /v1/status;
      discover the configured servers; write Envoy xDS files when envoy.xds_dir is set;
      /v1/config and the stream need the plugin token (plugin_token, generated when missing);
      --kube-gateway: Kubernetes mode (build feature `kube`): the servers of that Gateway come
      from MCPServerRegistration/MCPServer resources (docs/istio.md), besides the file's
  mcpgw-sidecar bootstrap --config FILE [--out FILE] [--no-wasm]
      write the Envoy bootstrap for standalone mode (stdout by default; --out FILE is written
      with mode 0600: it holds the plugin token) and the initial xDS files
  mcpgw-sidecar check --config FILE
      validate the configuration file and print what it resolves to
environment: MCPGW_LOG=error|warn|info|debug|trace (default info)";

struct Args {
    command: String,
    config: Option<PathBuf>,
    out: Option<PathBuf>,
    wasm: bool,
    kube_gateway: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        command: "run".into(),
        config: None,
        out: None,
        wasm: true,
        kube_gateway: None,
    };
    let mut it = std::env::args().skip(1);
    let mut first = true;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => args.config = it.next().map(PathBuf::from),
            "--out" | "-o" => args.out = it.next().map(PathBuf::from),
            "--no-wasm" => args.wasm = false,
            "--kube-gateway" => args.kube_gateway = it.next(),
            "--help" | "-h" => args.command = "help".into(),
            "--version" | "-V" => args.command = "version".into(),
            cmd if first && !cmd.starts_with('-') => args.command = cmd.to_string(),
            other => return Err(format!("unexpected argument {other:?}")),
        }
        first = false;
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("mcpgw-sidecar: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    let needs_config = || {
        args.config
            .clone()
            .ok_or_else(|| "--config FILE is required".to_string())
    };
    let result = match args.command.as_str() {
        "help" => {
            println!("{USAGE}");
            Ok(())
        }
        "version" => {
            println!("mcpgw-sidecar {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "run" => needs_config().and_then(|c| serve(&c, args.kube_gateway.as_deref())),
        "bootstrap" => needs_config().and_then(|c| bootstrap(&c, args.out.as_deref(), args.wasm)),
        "check" => needs_config().and_then(|c| check(&c)),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("mcpgw-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let level = std::env::var("MCPGW_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    // rmcp logs every transport hiccup at ERROR; our own lines carry the reason. Show its logs
    // only when debugging.
    let rmcp = if level >= tracing::Level::DEBUG {
        LevelFilter::from_level(level)
    } else {
        LevelFilter::OFF
    };
    // Likewise the Kubernetes client's watch retries: Kubernetes mode logs each with its cause.
    let filter = Targets::new()
        .with_default(level)
        .with_target("rmcp", rmcp)
        .with_target("kube_runtime", rmcp)
        .with_target("kube_client", rmcp);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_writer(std::io::stderr)
        .finish()
        .with(filter)
        .init();
}

fn serve(config: &Path, kube_gateway: Option<&str>) -> Result<(), String> {
    // One crypto provider for every TLS client (reqwest is built without a default one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let settings = Arc::new(settings::load(config, settings::KeyFile::Create)?);
        // Fixed for the life of the process, like `listen`: the plugin's copy is in Envoy's
        // bootstrap, so a new token needs a new bootstrap and restarts anyway.
        let token = settings
            .plugin_token
            .clone()
            .ok_or("plugin_token: not resolved")?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| format!("listen {}: {e}", settings.listen))?;
        tracing::info!(
            "mcpgw-sidecar {} listening on http://{} (config {})",
            env!("CARGO_PKG_VERSION"),
            settings.listen,
            config.display()
        );
        let (engine, outputs) = engine::Engine::new(settings.clone());
        let (config_tx, config_rx) = mpsc::channel(8);
        match kube_gateway {
            None => {
                tokio::spawn(watch::watch(config.to_path_buf(), settings, config_tx));
            }
            #[cfg(feature = "kube")]
            Some(gateway) => {
                let gateway = k8s::model::ObjectKey::parse(gateway)
                    .map_err(|e| format!("--kube-gateway: {e}"))?;
                let client = kube::Client::try_default()
                    .await
                    .map_err(|e| format!("kubernetes client (KUBECONFIG or in-cluster): {e}"))?;
                tokio::spawn(k8s::run(
                    config.to_path_buf(),
                    gateway,
                    client,
                    config_tx,
                    outputs.status.clone(),
                    outputs.document.clone(),
                ));
            }
            #[cfg(not(feature = "kube"))]
            Some(_) => {
                return Err(
                    "--kube-gateway: this sidecar was built without Kubernetes mode \
                            (cargo build -p mcpgw-sidecar --features kube)"
                        .into(),
                )
            }
        }
        tokio::spawn(engine.run(config_rx));
        let server = axum::serve(listener, http::router(outputs, &token));
        tokio::select! {
            result = server => result.map_err(|e| format!("HTTP server: {e}")),
            _ = shutdown() => {
                tracing::info!("shutting down");
                Ok(())
            }
        }
    })
}

async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn bootstrap(config: &Path, out: Option<&Path>, wasm: bool) -> Result<(), String> {
    let mut settings = settings::load(config, settings::KeyFile::ReadOnly)?;
    // The plugin configuration carries the token: create its file now if `run` has not yet.
    let token = if wasm {
        Some(settings::ensure_plugin_token(&mut settings)?)
    } else {
        None
    };
    let dir = settings
        .envoy
        .xds_dir
        .clone()
        .ok_or("envoy.xds_dir must be set to generate a bootstrap")?;
    warn_if_admin_exposed(&settings);
    // Initial xDS files, so Envoy can start before the sidecar. Files that exist are the
    // running sidecar's (it writes them whenever its catalog changes, and always once when it
    // starts): overwriting them with this file's servers alone would hide what it discovered,
    // e.g. every server of Kubernetes mode, until its next change.
    if !dir.join(xds::CDS_FILE).exists() || !dir.join(xds::RDS_FILE).exists() {
        let mut writer = xds::Writer::new(dir.clone());
        writer.write(&settings, std::time::Instant::now())?;
    }
    let doc = xds::bootstrap(
        &settings,
        &dir,
        &xds::BootstrapOptions {
            plugin_token: token,
        },
    );
    let mut text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    text.push('\n');
    match out {
        Some(path) => {
            let parent = path.parent().unwrap_or(Path::new("."));
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or("--out must name a file")?;
            xds::write_atomic_private(parent, &name, text.as_bytes())?;
            eprintln!(
                "wrote {} and the xDS files in {}",
                path.display(),
                dir.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Envoy's admin interface has no authentication, and its `/config_dump` shows the plugin
/// configuration (the plugin token; in static setups the whole document with its credentials).
fn warn_if_admin_exposed(settings: &settings::Settings) {
    let admin = settings.envoy.admin;
    if !admin.ip().is_loopback() {
        tracing::warn!(
            "envoy.admin {admin} is not a loopback address: Envoy's admin interface has no \
             authentication and its /config_dump shows the plugin token; bind it to 127.0.0.1"
        );
    }
}

fn check(config: &Path) -> Result<(), String> {
    let settings = settings::load(config, settings::KeyFile::ReadOnly)?;
    println!("{}: ok", config.display());
    warn_if_admin_exposed(&settings);
    if !settings.session_key_file.exists() {
        println!(
            "session key file {} does not exist yet: `run` creates it",
            settings.session_key_file.display()
        );
    }
    match (&settings.plugin_token_source, &settings.plugin_token) {
        (settings::TokenSource::File(path), None) => println!(
            "plugin token file {} does not exist yet: `run` and `bootstrap` create it",
            path.display()
        ),
        (source, _) => println!("plugin token from {source}"),
    }
    println!("listen {}", settings.listen);
    for s in &settings.servers {
        let creds = match &s.headers {
            Ok(h) => format!("{} header(s)", h.len()),
            Err(e) => format!("NOT USABLE: {e}"),
        };
        println!(
            "server {} {} prefix {:?} {}authority {} cluster {} {creds}",
            s.name,
            s.url,
            s.prefix,
            if s.enabled { "" } else { "(disabled) " },
            s.authority,
            s.cluster
        );
    }
    Ok(())
}
