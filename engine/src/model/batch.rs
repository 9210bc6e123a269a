//! One batch: the entries' inputs joined, one backend call, the outputs split back by request, every
//! caller answered.

use super::*;

pub(super) fn run_batch(shared: &Shared, backend: &mut dyn Backend, batch: Batch) {
    let stats = &shared.stats;
    let dropped = batch.cancelled + batch.expired.len();
    if dropped > 0 {
        stats.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        shared
            .metrics
            .count(Outcome::Dropped, batch.cancelled as u64);
        for late in batch.expired {
            let _ = late.reply.send(Err(EngineError::DeadlineExceeded));
        }
    }
    if batch.entries.is_empty() {
        return;
    }
    let started = Instant::now();
    let rows = batch.rows;
    let mut replies = Vec::with_capacity(batch.entries.len());
    let mut queue_times = Vec::with_capacity(batch.entries.len());
    let inputs = concat(batch.entries, &mut replies, &mut queue_times, started);
    // A monitored version keeps a copy of the inputs when its monitor has room for the batch.
    let m = &shared.manifest;
    let tap = shared.tap.get();
    let permit = tap.and_then(|tap| tap.reserve(&m.name, m.version, rows));
    let observed = permit.as_ref().map(|_| inputs.clone());
    let input_time = started.elapsed();
    for queue in &queue_times {
        stats.queue.record(1, *queue);
        shared.metrics.queue.record(queue.as_secs_f64());
    }
    // A panic in a backend (a bug, in ORT's bindings or ours) fails this batch, not the worker.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.run(inputs)))
        .unwrap_or_else(|payload| {
            let message = crate::metrics::panic_message(payload.as_ref());
            crate::metrics::count_panic("model_worker", &message);
            Err(BackendError::Panicked(message))
        });
    let infer_time = started.elapsed() - input_time;
    let requests = replies.len();
    let result = result.and_then(|outputs| {
        if let (Some(permit), Some(inputs)) = (permit, observed) {
            permit.send(Observed {
                model: shared.model_name.clone(),
                version: m.version,
                rows,
                inputs,
                outputs: outputs.clone(),
            });
            if let Some(tap) = tap {
                tap.sent_one();
            }
        }
        scatter(outputs, &replies, rows)
    });
    let output_time = started.elapsed() - input_time - infer_time;
    // Recorded before anyone is answered, so a caller that reads the statistics after its answer sees it.
    stats.record_batch(&BatchTiming {
        rows,
        requests,
        input: input_time,
        infer: infer_time,
        output: output_time,
    });
    let compute = started.elapsed();
    shared.metrics.compute.record(compute.as_secs_f64());
    match result {
        Ok(per_request) => {
            for (((reply, _), outputs), queue) in
                replies.into_iter().zip(per_request).zip(queue_times)
            {
                let timing = Timing {
                    queue,
                    compute,
                    batch_rows: rows,
                };
                let _ = reply.send(Ok(InferOutput { outputs, timing }));
            }
        }
        Err(e) => {
            tracing::error!(model = %shared.manifest.name, version = shared.manifest.version, error = %e, "batch failed");
            for (reply, _) in replies {
                let _ = reply.send(Err(EngineError::Inference(e.clone())));
            }
        }
    }
    shared.metrics.batch_size.record(rows as f64);
}

pub(super) type Reply = oneshot::Sender<Result<InferOutput, EngineError>>;

/// Joins the entries' inputs into one tensor per model input; keeps each entry's reply and row count.
pub(super) fn concat(
    entries: Vec<Entry>,
    replies: &mut Vec<(Reply, usize)>,
    queue_times: &mut Vec<Duration>,
    now: Instant,
) -> Vec<Tensor> {
    let total: usize = entries.iter().map(|e| e.rows).sum();
    let mut joined: Option<Vec<Tensor>> = None;
    let single = entries.len() == 1;
    for entry in entries {
        queue_times.push(now.saturating_duration_since(entry.enqueued));
        replies.push((entry.reply, entry.rows));
        if single {
            joined = Some(entry.inputs);
            break;
        }
        let joined = joined.get_or_insert_with(|| {
            entry
                .inputs
                .iter()
                .map(|t| {
                    let mut shape = t.shape.clone();
                    shape[0] = total;
                    Tensor {
                        name: t.name.clone(),
                        shape,
                        data: TensorData::with_capacity(t.data.datatype(), total * t.row_len()),
                    }
                })
                .collect()
        });
        for (into, from) in joined.iter_mut().zip(&entry.inputs) {
            into.data.extend_from(&from.data);
        }
    }
    joined.unwrap_or_default()
}

/// Splits each output back into the requests' rows, in the batch's order.
pub(super) fn scatter(
    outputs: Vec<Tensor>,
    replies: &[(Reply, usize)],
    rows: usize,
) -> Result<Vec<Vec<Tensor>>, BackendError> {
    for out in &outputs {
        if out.rows() != rows {
            return Err(BackendError::Output(format!(
                "`{}` has {} rows for a batch of {rows}",
                out.name,
                out.rows()
            )));
        }
    }
    if replies.len() == 1 {
        return Ok(vec![outputs]);
    }
    let mut per_request = Vec::with_capacity(replies.len());
    let mut offset = 0;
    for &(_, n) in replies {
        per_request.push(
            outputs
                .iter()
                .map(|out| {
                    let width = out.row_len();
                    let mut shape = out.shape.clone();
                    shape[0] = n;
                    Tensor {
                        name: out.name.clone(),
                        shape,
                        data: out.data.slice(offset * width, (offset + n) * width),
                    }
                })
                .collect(),
        );
        offset += n;
    }
    debug_assert_eq!(offset, rows);
    Ok(per_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        x: &[f32],
        ids: &[i64],
    ) -> (Entry, oneshot::Receiver<Result<InferOutput, EngineError>>) {
        let (reply, rx) = oneshot::channel();
        let rows = x.len() / 2;
        let entry = Entry {
            inputs: vec![
                Tensor {
                    name: "x".into(),
                    shape: vec![rows, 2],
                    data: TensorData::Fp32(x.to_vec()),
                },
                Tensor {
                    name: "id".into(),
                    shape: vec![rows, 1],
                    data: TensorData::Int64(ids.to_vec()),
                },
            ],
            rows,
            reply,
            enqueued: Instant::now(),
            deadline: None,
        };
        (entry, rx)
    }

    #[test]
    fn concat_joins_every_input_in_entry_order_and_scatter_gives_each_its_rows_back() {
        let (a, _ra) = entry(&[1.0, 2.0], &[10]);
        let (b, _rb) = entry(&[3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &[20, 21, 22]);
        let (mut replies, mut queued) = (Vec::new(), Vec::new());
        let joined = concat(vec![a, b], &mut replies, &mut queued, Instant::now());
        assert_eq!(replies.iter().map(|r| r.1).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(queued.len(), 2);
        assert_eq!(joined[0].shape, [4, 2]);
        assert_eq!(
            joined[0].data,
            TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
        );
        assert_eq!(joined[1].shape, [4, 1]);
        assert_eq!(joined[1].data, TensorData::Int64(vec![10, 20, 21, 22]));

        // The model's outputs for the 4 rows, split back: 1 row, then 3.
        let outputs = vec![Tensor {
            name: "y".into(),
            shape: vec![4, 1],
            data: TensorData::Fp32(vec![0.5, 1.5, 2.5, 3.5]),
        }];
        let per_request = scatter(outputs, &replies, 4).unwrap();
        assert_eq!(per_request.len(), 2);
        assert_eq!(per_request[0][0].shape, [1, 1]);
        assert_eq!(per_request[0][0].data, TensorData::Fp32(vec![0.5]));
        assert_eq!(per_request[1][0].shape, [3, 1]);
        assert_eq!(
            per_request[1][0].data,
            TensorData::Fp32(vec![1.5, 2.5, 3.5])
        );
    }

    #[test]
    fn a_lone_entry_passes_through_and_an_output_of_the_wrong_rows_fails_the_batch() {
        let (a, _ra) = entry(&[1.0, 2.0, 3.0, 4.0], &[1, 2]);
        let (mut replies, mut queued) = (Vec::new(), Vec::new());
        let joined = concat(vec![a], &mut replies, &mut queued, Instant::now());
        assert_eq!(joined[0].data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]));
        let short = vec![Tensor {
            name: "y".into(),
            shape: vec![1, 1],
            data: TensorData::Fp32(vec![9.0]),
        }];
        assert!(matches!(
            scatter(short, &replies, 2),
            Err(BackendError::Output(m)) if m.contains("1 rows for a batch of 2")
        ));
    }
}
