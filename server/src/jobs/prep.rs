//! The threads that prepare batch jobs' chunks: parse, assemble feature rows, wait for the model, encode.
//! Their own OS threads, never the runtime's, and at a lower scheduling priority (nice +10 on Linux), so
//! that under contention the threads serving interactive requests win the CPU and a job takes what is left.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Work = Box<dyn FnOnce() + Send>;

pub struct Prep {
    tx: Mutex<mpsc::Sender<Work>>,
}

/// How much lower than the server's other threads the preparing threads are scheduled.
const NICE: i32 = 10;

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

/// Nice +10 for the calling thread (Linux schedules threads one by one).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with who = 0 changes only the calling thread; it reads and writes no memory.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
    }
}
