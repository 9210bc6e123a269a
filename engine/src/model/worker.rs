//! The worker threads that own a version's sessions: interactive ones, and background ones at idle
//! priority.

use super::*;

/// One interactive worker: waits for requests, forms a batch, runs it, answers. Returns once the queue is
/// closed and holds no interactive request.
pub(super) fn worker(shared: Arc<Shared>, slot: usize) {
    let max_rows = shared.manifest.batching.max_batch_size;
    let delay = Duration::from_micros(shared.manifest.batching.max_queue_delay_us);
    loop {
        let batch = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while state.no_interactive() {
                if state.closed {
                    return;
                }
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if !delay.is_zero() {
                let until = state.oldest().expect("not empty") + delay;
                while state.rows() < max_rows && !state.closed {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    state = shared
                        .wake
                        .wait_timeout(state, until - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            let batch = state.next_batch(max_rows, Instant::now());
            shared.metrics.depth.set(state.rows() as f64);
            if !state.no_interactive() {
                // Another worker may take what is left while this one computes.
                shared.wake.notify_one();
            }
            batch
        };
        let mut backend = shared.slots[slot].lock().unwrap_or_else(|e| e.into_inner());
        run_batch(&shared, backend.as_mut(), batch);
    }
}

/// One background worker: lowers its thread to idle priority, makes its session there, then runs background
/// slices as they come, a batch at a time. Returns once the queue is closed and holds no slice.
pub(super) fn background_worker(shared: Arc<Shared>) {
    idle_priority();
    let max_rows = shared.manifest.batching.max_batch_size;
    let mut backend = match (shared.factory)(Lane::Background) {
        Ok(mut backend) => {
            let _ = backend.run(warmup_inputs(&shared.manifest, max_rows));
            Ok(backend)
        }
        Err(e) => {
            tracing::error!(model = %shared.manifest.name, version = shared.manifest.version, error = %e,
                "cannot make a background session; batch job slices fail");
            Err(e.to_string())
        }
    };
    loop {
        let batch = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while !state.has_background() {
                if state.closed {
                    return;
                }
                state = shared
                    .wake_background
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            let batch = state.next_background(max_rows, Instant::now());
            if state.has_background() {
                shared.wake_background.notify_one();
            }
            batch
        };
        match &mut backend {
            Ok(backend) => run_batch(&shared, backend.as_mut(), batch),
            Err(e) => {
                for entry in batch.entries {
                    let _ = entry.reply.send(Err(EngineError::Runtime(format!(
                        "no background session: {e}"
                    ))));
                }
            }
        }
    }
}

pub(super) fn spawn(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, EngineError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| EngineError::Runtime(format!("cannot start a worker thread: {e}")))
}

/// Idle scheduling for the calling thread and the threads it starts: it runs only when no other thread
/// wants the CPU. Unprivileged on Linux (and permanent there: leaving it needs CAP_SYS_NICE).
pub(super) fn idle_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower a background worker to idle priority");
        }
    }
}
