//! Background loops (the webhook dispatcher, the forecast schedule, the batch runner and janitor) under a
//! supervisor: a panic in one round is counted, logged, and the loop starts again a second later, instead
//! of the server going on without it.

use std::future::Future;
use std::time::Duration;

/// How long a loop that panicked waits before it starts again.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// Spawns the loop `start` makes, and makes it again each time it panics. A loop that returns (the server
/// is stopping) is not restarted.
pub fn supervise<F, Fut>(place: &'static str, start: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(start()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    let message = mercator_engine::metrics::panic_message(e.into_panic().as_ref());
                    mercator_engine::metrics::count_panic(place, &message);
                    tokio::time::sleep(RESTART_AFTER).await;
                }
                Err(_) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_loop_that_panics_is_started_again() {
        let starts = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
        let counted = starts.clone();
        super::supervise("test", move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            async move {
                if n < 2 {
                    panic!("round {n} fails");
                }
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
        });
        rx.await.unwrap();
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "two panics, then a clean run"
        );
    }
}
