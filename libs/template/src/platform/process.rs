//! A service as its own process: configuration checked before anything starts, telemetry
//! inside the runtime, the service started, and on SIGTERM or Ctrl-C NOT_SERVING held for the
//! grace period before the graceful stop.

use super::config::{PlatformConfig, misspelt_variables};
use super::engines::Platform;
use super::lifecycle::start;
use super::service::ServiceDefinition;

/// Exit status of a process stopped by its configuration.
pub const EXIT_CONFIG: i32 = 78;

/// The configuration of a process running `definitions`, checked: a value not accepted, or a
/// variable one typo away from one a service reads, is an error naming it.
pub fn checked_config(definitions: &[ServiceDefinition]) -> Result<PlatformConfig, String> {
    let config = PlatformConfig::from_env().map_err(|e| e.to_string())?;
    let known: Vec<String> = definitions.iter().flat_map(|d| d.variables()).collect();
    let names: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    if let Some((typo, meant)) = misspelt_variables(&names, &known).into_iter().next() {
        return Err(format!(
            "{typo} is not a Sterling variable: did you mean {meant}?"
        ));
    }
    Ok(config)
}

/// Runs one service as its own process: configuration, logging and tracing, the platform the
/// configuration names, listening on `STERLING_LISTEN`; stops gracefully on SIGTERM or Ctrl-C.
/// A configuration error stops it at once with a message and exit status 78.
pub fn main(definition: ServiceDefinition) -> anyhow::Result<()> {
    let config = match checked_config(&[definition]) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{}: configuration: {message}", definition.name);
            std::process::exit(EXIT_CONFIG);
        }
    };
    tokio::runtime::Runtime::new()?.block_on(serve(definition, config))
}

/// Serves one service until SIGTERM or Ctrl-C, then announces NOT_SERVING, holds it for the
/// shutdown grace and stops gracefully. Call inside the Tokio runtime: telemetry is
/// initialised here, where the OTLP exporter can spawn its tasks.
pub async fn serve(definition: ServiceDefinition, config: PlatformConfig) -> anyhow::Result<()> {
    crate::telemetry::init_for(definition.name, config.log_format, &config.log_filter);
    if let Some(address) = config.metrics_addr {
        crate::telemetry::install_metrics(address);
    }
    let listen = config.listen;
    let grace = config.shutdown_grace;
    let platform = Platform::from_config(config).await?;
    let service = start(&definition, &platform, listen).await?;
    shutdown_signal().await;
    service.announce_stopping().await;
    tokio::time::sleep(grace).await;
    service.stop().await;
    crate::telemetry::flush();
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
