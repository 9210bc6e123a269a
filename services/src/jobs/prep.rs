//! The threads that prepare batch jobs' chunks: parse, assemble feature rows, wait for the model, encode.
//! Their own OS threads, never the runtime's, scheduled at idle priority (`SCHED_IDLE` on Linux, as the
//! models' background sessions are): they run only when the threads serving interactive requests leave a
//! core free, so a job takes what is left and never delays a request.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Work = Box<dyn FnOnce() + Send>;

pub struct Prep {
    tx: Mutex<mpsc::Sender<Work>>,
    threads: usize,
    alive: Arc<AtomicUsize>,
}

/// Why a unit of work gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrepError {
    /// It panicked; the message is the panic's.
    Panicked(String),
    /// No preparing thread is left to run it.
    Gone,
}

/// Counts a thread out when it ends, however it ends.
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Prep {
    /// Starts `threads` preparing threads.
    pub fn start(threads: usize) -> std::io::Result<Prep> {
        let (tx, rx) = mpsc::channel::<Work>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = threads.max(1);
        let alive = Arc::new(AtomicUsize::new(0));
        for i in 0..threads {
            let rx = rx.clone();
            alive.fetch_add(1, Ordering::AcqRel);
            let guard = Alive(alive.clone());
            std::thread::Builder::new()
                .name(format!("batch-prep-{i}"))
                .spawn(move || {
                    let _guard = guard;
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
        Ok(Prep {
            tx: Mutex::new(tx),
            threads,
            alive,
        })
    }

    /// Whether every preparing thread is still there.
    pub fn is_whole(&self) -> bool {
        self.alive.load(Ordering::Acquire) == self.threads
    }

    /// Runs `f` on a preparing thread. A panic in `f` is caught there and comes back as
    /// [`PrepError::Panicked`]; the thread lives on.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PrepError> {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
                let message = mercator_engine::metrics::panic_message(payload.as_ref());
                mercator_engine::metrics::count_panic("batch_prep", &message);
                PrepError::Panicked(message)
            });
            let _ = tx.send(outcome);
        });
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(work)
            .map_err(|_| PrepError::Gone)?;
        rx.await.map_err(|_| PrepError::Gone)?
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
