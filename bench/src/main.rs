//! `tombola-bench`: Tombola's benchmarks, one subcommand each.
//!
//! Every subcommand prints its progress on stderr and, as the last line on stdout, one JSON
//! object with its figures (including a same-run baseline and the ratios to it). The exit
//! code is non-zero when the run's own correctness checks fail.

mod alloc;
mod api_client;
mod database;
mod domain;
mod engine;
mod export;
mod limits;

mod rebuild;

mod http;
mod report;
mod routing;
mod sys;
mod webhooks;
mod webhooks_out;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: alloc::CountingAlloc = alloc::CountingAlloc;

#[derive(Debug, Parser)]
#[command(name = "tombola-bench", version, about = "Tombola's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The Raffle aggregate in memory: build a sold-out raffle, measure resident memory,
    /// decision throughput and the snapshot, against a naive model built in the same run.
    Domain(domain::Args),
    /// One hot raffle through Tombola's engine (group commit) against cqrs-es's
    /// `CqrsFramework` + postgres-es, same aggregate and workload, real PostgreSQL.
    Engine(engine::Args),
    /// Every projection rebuilt from a log of millions of events, against a plain ordered
    /// read of the same events (issue 13).
    Rebuild(rebuild::Args),
    /// Signed Stripe deliveries over HTTP: acknowledgement latency, issue lag, duplicates.
    Webhooks(webhooks::Args),
    /// A fully sold raffle's tickets.csv over HTTP against a plain COPY of the same rows:
    /// rows/s, first byte, server memory growth; and `audit verify` of its log.
    Export(export::Args),
    /// Outbound webhooks: messages/s to loopback receivers (fast, slow, dead), delivery lag
    /// from commit, none lost, and the reservation's p99 against a run without endpoints.
    WebhooksOut(webhooks_out::Args),
    /// Fault injection over several `tombola serve` processes on a PostgreSQL the harness
    /// owns; checks the log against every answer the clients got (docs/RELIABILITY.md).
    Chaos(tombola_bench::chaos::Args),
    /// Shared rate limits: their cost on the reservation path (vs off, same run) and two
    /// `tombola serve` processes holding one key's limit, across a restart.
    Limits(limits::Args),
    /// What wrong routing costs: two nodes, each raffle on one of them vs every request to
    /// either, same run.
    Routing(routing::Args),

    /// One 10M raffle over HTTP against the real `tombola serve`: reservations/s and p99,
    /// against a no-op authenticated route and the row-lock approach in the same run.
    Hot(http::hot::Args),
    /// 500 raffles × 50,000 tickets, Zipf-skewed buyers, over HTTP.
    Many(http::many::Args),
    /// 50,000 holds falling due in the same second while reservations continue.
    Expiry(http::expiry::Args),
    /// Many big, mostly sold raffles resident: RSS, cold start and load, reservations.
    Mega(http::mega::Args),
    /// Every scenario, one after the other (`--quick`: small sizes, for CI).
    All(http::all::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Domain(args) => domain::run(args),
        Command::Engine(args) => engine::run(args),
        Command::Webhooks(args) => webhooks::run(args),
        Command::Export(args) => export::run(args),
        Command::WebhooksOut(args) => webhooks_out::run(args),

        Command::Rebuild(args) => rebuild::run(args),
        Command::Chaos(args) => chaos(args),
        Command::Limits(args) => limits::run(args),
        Command::Routing(args) => routing::run(args),

        Command::Hot(args) => http::hot::run(args),
        Command::Many(args) => http::many::run(args),
        Command::Expiry(args) => http::expiry::run(args),
        Command::Mega(args) => http::mega::run(args),
        Command::All(args) => http::all::run(args),
    };
    report::finish(outcome)
}

fn chaos(args: &tombola_bench::chaos::Args) -> report::BenchResult<report::Report> {
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(tombola_bench::chaos::run(args))?;
    report::Report::new(&outcome.summary, outcome.violations)
}
