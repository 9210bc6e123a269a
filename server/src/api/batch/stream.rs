//! `/ws/predictions/{batch_id}`: a job's progress as it commits, over a WebSocket.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use mercator_store::{BatchJob, BatchState};
use serde::Deserialize;
use utoipa::IntoParams;

use super::super::extract::ApiQuery;
use super::super::ErrorEnvelope;
use super::Urls;
use crate::auth::{Auth, Viewer};
use crate::error::ApiError;
use crate::AppState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProgressQuery {
    /// The API key, for clients that cannot set headers on a WebSocket handshake.
    pub api_key: Option<String>,
}

/// A WebSocket of a batch job's progress: `{"type": "snapshot"}` first (the current state, however late the
/// client comes), then `progress` at most every 250 ms as chunks commit (and at least every 10 s), then
/// `final` with the summary, and a normal close. Each message: type, batch_id, seq, state, processed,
/// total, succeeded, failed, rows_per_sec, eta_seconds, ts. Another organization's job is 404.
#[utoipa::path(get, path = "/ws/predictions/{batch_id}", tag = "predictions",
    params(("batch_id" = String, Path), ProgressQuery), security(("api_key" = [])),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
              (status = "4XX", body = ErrorEnvelope)))]
pub(super) async fn progress_stream(
    State(app): State<AppState>,
    caller: Auth<Viewer>,
    Path(batch_id): Path<String>,
    ApiQuery(_): ApiQuery<ProgressQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let org = caller.organization_id.clone();
    app.jobs.job(&org, &batch_id).await?;
    // Counted under the key's socket cap and with incoming messages capped, as the other streams.
    let (upgrade, held) = super::super::stream::admit(&app, caller.0.clone(), upgrade)?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        follow(socket, app, org, batch_id).await;
        drop(held);
    }))
}

/// Least time between two progress messages, and most between two messages of a job that moves slowly.
const MIN_GAP: Duration = Duration::from_millis(250);
const HEARTBEAT: Duration = Duration::from_secs(10);

async fn follow(mut socket: WebSocket, app: AppState, org: String, id: String) {
    let mut updates = app.jobs.subscribe(&id);
    let mut seq = 0u64;
    let mut kind = "snapshot";
    let mut live = true;
    let mut last: Option<(Instant, u64, BatchState)> = None;
    loop {
        let Ok(job) = app.jobs.job(&org, &id).await else {
            break;
        };
        let changed = last.is_none_or(|(_, processed, state)| {
            processed != job.processed_rows || state != job.state
        });
        let due = last.is_none_or(|(at, _, _)| at.elapsed() >= HEARTBEAT);
        if job.state.is_terminal() || changed || due {
            let message = message(&app, &job, kind, seq);
            seq += 1;
            kind = "progress";
            if socket
                .send(Message::Text(message.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
            last = Some((Instant::now(), job.processed_rows, job.state));
            if job.state.is_terminal() {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "the job has ended".into(),
                    })))
                    .await;
                break;
            }
            tokio::time::sleep(MIN_GAP).await;
        }
        tokio::select! {
            changed = updates.changed(), if live => {
                // The runner is gone: the job ended (or stopped); the store says which.
                live = changed.is_ok();
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    drop(updates);
    app.jobs.unsubscribe(&id);
}

/// One progress message; `final` adds the summary.
fn message(app: &AppState, job: &BatchJob, kind: &str, seq: u64) -> serde_json::Value {
    let progress = app.jobs.progress(job);
    let terminal = job.state.is_terminal();
    let mut m = serde_json::json!({
        "type": if terminal { "final" } else { kind },
        "batch_id": job.id,
        "seq": seq,
        "state": progress.state,
        "processed": progress.processed,
        "total": progress.total,
        "succeeded": progress.succeeded,
        "failed": progress.failed,
        "rows_per_sec": progress.rows_per_sec,
        "eta_seconds": progress.eta_seconds,
        "ts": chrono::Utc::now(),
    });
    if terminal {
        let duration = match (job.started_at, job.finished_at) {
            (Some(s), Some(f)) => (f - s).num_milliseconds() as f64 / 1000.0,
            _ => 0.0,
        };
        m["duration_seconds"] = serde_json::json!(duration);
        m["results_url"] = serde_json::json!(Urls::of(&job.id).results);
        m["error"] = serde_json::json!(job.error);
    }
    m
}
