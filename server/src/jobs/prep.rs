//! The threads that prepare batch jobs' chunks: parse, assemble feature rows, wait for the model, encode.
//! Their own OS threads, never the runtime's, scheduled at idle priority (`SCHED_IDLE` on Linux, as the
//! models' background sessions are): they run only when the threads serving interactive requests leave a
//! core free, so a job takes what is left and never delays a request.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Work = Box<dyn FnOnce() + Send>;

pub struct Prep {
    tx: Mutex<mpsc::Sender<Work>>,
}

impl Prep {
    /// Starts `threads` preparing threads.
    pub fn start(threads: usize) -> std::io::Result<Prep> {
        let (tx, rx) = mpsc::channel::<Work>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("batch-prep-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let work = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match work {
                            Ok(work) => work(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Prep { tx: Mutex::new(tx) })
    }

    /// Runs `f` on a preparing thread; None if the threads are gone.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move || {
            let _ = tx.send(f());
        });
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(work)
            .ok()?;
        rx.await.ok()
    }
}

/// Idle scheduling for the calling thread (Linux schedules threads one by one; unprivileged).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` outlives the call.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower a batch-prep thread to idle priority");
        }
    }
}
