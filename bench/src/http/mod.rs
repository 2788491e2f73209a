//! What the HTTP scenarios (`hot`, `many`, `expiry`, `mega`) share: the real `tombola serve`
//! binary started on a fresh database ([`server`]), a closed-loop load generator of N
//! keep-alive connections bounded in time ([`load`]), and the row-lock approach they are
//! compared with ([`rowlock`]).

pub mod all;
pub mod check;
pub mod expiry;
pub mod hot;
pub mod load;
pub mod many;
pub mod mega;
pub mod plot;
pub mod rowlock;
pub mod server;
pub mod workload;

use std::time::Duration;

/// The bench's ports: 127.0.0.1:18600–18999 (the range this suite was given), or
/// `TOMBOLA_BENCH_PORTS=<first>-<last>` (several people benching on one machine). The first
/// one that can be bound is returned; it is free again when the caller binds it.
pub fn free_port() -> Result<u16, String> {
    let (first, last) = std::env::var("TOMBOLA_BENCH_PORTS")
        .ok()
        .and_then(|range| {
            let (first, last) = range.split_once('-')?;
            Some((first.trim().parse().ok()?, last.trim().parse().ok()?))
        })
        .unwrap_or((18600u16, 18999u16));
    (first..=last)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .ok_or_else(|| format!("no free port in {first}-{last}"))
}

/// The value below which a fraction `p` of `sorted` lies, in milliseconds (microseconds in).
pub fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    (f64::from(sorted[index]) / 10.0).round() / 100.0
}

/// The 1-minute load average now, for the report (the machine is shared).
pub fn load_now() -> f64 {
    crate::sys::load_average().map_or(0.0, |l| l[0])
}

/// Time-bounded settings every HTTP scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Window {
    /// Seconds each measured phase runs.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Seconds of load before each measured phase, not counted (connections, caches).
    #[arg(long, default_value_t = 2)]
    pub warmup_seconds: u64,
}

impl Window {
    pub fn measured(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }
    pub fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup_seconds)
    }
}
