//! What the process can read about itself (Linux): resident memory, page faults and load
//! from `/proc`, and the time this thread actually ran (`CLOCK_THREAD_CPUTIME_ID`) versus
//! waited for a CPU (`/proc/thread-self/schedstat`). On a shared, noisy 2-core machine the
//! wall clock includes the time other processes held the cores; the on-CPU time does not,
//! so both are reported.

use std::ops::AddAssign;
use std::time::{Duration, Instant};

/// The process's resident set size, when readable.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Minor page faults of this process so far (`/proc/self/stat`, field 10), when readable:
/// each is a page touched for the first time, which is what fresh memory costs.
pub fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    after_name.split_whitespace().nth(7)?.parse().ok()
}

/// The 1, 5 and 15-minute load averages.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// Time the calling thread has spent on a CPU (user and kernel), to the nanosecond.
fn thread_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Time the calling thread has been runnable but waiting for a CPU (the scheduler updates
/// it each time the thread gets a CPU back, so it is exact at that granularity).
fn thread_waited() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let waited = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(Duration::from_nanos(waited))
}

/// Whether the time spent waiting for a CPU can be read here; when not, `waited` is 0.
pub fn wait_time_available() -> bool {
    thread_waited().is_some()
}

/// How long something took: wall clock, on-CPU time of this thread, and time it waited for
/// a CPU while runnable. Threads it spawned are not counted in `cpu`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    pub wall: Duration,
    pub cpu: Duration,
    pub waited: Duration,
}

impl AddAssign for Span {
    fn add_assign(&mut self, other: Self) {
        self.wall += other.wall;
        self.cpu += other.cpu;
        self.waited += other.waited;
    }
}

/// Runs `work` and measures it.
pub fn span<T>(work: impl FnOnce() -> T) -> (T, Span) {
    let waited = thread_waited();
    let cpu = thread_cpu_time();
    let t = Instant::now();
    let out = work();
    let wall = t.elapsed();
    let cpu = thread_cpu_time().saturating_sub(cpu);
    let waited = thread_waited()
        .zip(waited)
        .map_or(Duration::ZERO, |(after, before)| {
            after.saturating_sub(before)
        });
    (out, Span { wall, cpu, waited })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_grow_when_fresh_memory_is_touched() {
        let _exclusive = crate::alloc::EXCLUSIVE.lock();
        let before = minor_faults().expect("linux");
        let mut block = vec![0u8; 64 << 20];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        assert!(minor_faults().expect("linux") > before);
        drop(block);
    }

    #[test]
    fn a_busy_loop_runs_on_a_cpu() {
        let (_, span) = span(|| {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(20) {}
        });
        assert!(span.wall >= Duration::from_millis(20));
        assert!(span.cpu >= Duration::from_millis(1));
        assert!(span.cpu <= span.wall + Duration::from_millis(5));
    }
}
