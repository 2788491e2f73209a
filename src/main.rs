use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tombola::telemetry::init_logging();
    match tombola::cli::run(tombola::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tombola: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
