use clap::Parser;

/// Under load the server allocates and frees on every request across threads; glibc's
/// allocator spent about a tenth of the request threads' time in malloc and free there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let telemetry = tombola::telemetry::init(&tombola::telemetry::TelemetryConfig::from_env());
    let outcome = match tombola::cli::run(tombola::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tombola: {error:#}");
            std::process::ExitCode::FAILURE
        }
    };
    // Flushes the spans and error reports still queued.
    drop(telemetry);
    outcome
}
