//! The outbound webhooks' own runtime: one worker thread (and tokio's blocking threads) at a
//! lower OS priority. The subscriber, the claims, the signing and the sending then take the
//! CPU the requests leave: on a busy node the scheduler runs a sale first (decision 0030).

use tokio::runtime::{Builder, Handle, Runtime};

pub(super) struct NicedRuntime {
    runtime: Option<Runtime>,
}

impl NicedRuntime {
    pub(super) fn start(nice: i32) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tombola-webhooks")
            .enable_all()
            .on_thread_start(move || lower_priority(nice))
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    pub(super) fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives until dropped")
            .handle()
    }
}

impl Drop for NicedRuntime {
    fn drop(&mut self) {
        // Dropped from the server's runtime, where waiting for threads would block it: the
        // tasks have stopped by then, and the threads end on their own.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority: on Linux niceness belongs to each thread (its
/// TID), so the server's other threads keep theirs.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        tracing::warn!(%error, nice, "outbound webhooks run at the requests' priority");
    }
    #[cfg(not(target_os = "linux"))]
    tracing::info!(nice, "thread niceness is set on Linux only");
}
