//! The scheduler with a backend whose speed the test controls: admission, batching, drops, drain.
//! (The real ONNX Runtime path is covered by the server's tests against the shipped models.)

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mercator_engine::{
    Backend, BackendError, BackendFactory, DataType, EngineError, Lane, Manifest, Model, Tensor,
    TensorData, WARMUP,
};

/// Doubles its input; each batch waits for a permit from the test, so the test decides when work runs.
struct Gated {
    permits: Arc<Mutex<mpsc::Receiver<()>>>,
    batches: mpsc::Sender<usize>,
    threads: Arc<Mutex<Vec<String>>>,
}

impl Backend for Gated {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let rows = inputs[0].rows();
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.threads.lock().unwrap().push(thread);
        let _ = self.batches.send(rows);
        self.permits
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| BackendError::Run(format!("no permit: {e}")))?;
        let TensorData::Fp32(v) = &inputs[0].data else {
            unreachable!()
        };
        Ok(vec![Tensor {
            name: "y".into(),
            shape: inputs[0].shape.clone(),
            data: TensorData::Fp32(v.iter().map(|x| x * 2.0).collect()),
        }])
    }
}

/// A background session: doubles its input at once, and notes each batch's rows, thread and scheduling
/// policy.
struct Noting {
    seen: Arc<Mutex<Vec<(usize, String, i32)>>>,
}

impl Backend for Noting {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        // SAFETY: pid 0 asks about the calling thread; no memory is touched.
        let policy = unsafe { libc::sched_getscheduler(0) };
        let TensorData::Fp32(v) = &inputs[0].data else {
            unreachable!()
        };
        self.seen
            .lock()
            .unwrap()
            .push((inputs[0].rows(), thread, policy));
        Ok(vec![Tensor {
            name: "y".into(),
            shape: inputs[0].shape.clone(),
            data: TensorData::Fp32(v.iter().map(|x| x * 2.0).collect()),
        }])
    }
}

/// Requests always go through the queue here (inline_max_rows = 0) unless a test says otherwise.
fn manifest(max_batch_size: usize, queue_capacity: usize) -> Manifest {
    toml::from_str(&format!(
        r#"
        name = "double"
        version = 1
        kind = "generic"
        [[inputs]]
        name = "x"
        datatype = "FP32"
        shape = [-1, 1]
        [[outputs]]
        name = "y"
        datatype = "FP32"
        shape = [-1, 1]
        [batching]
        max_batch_size = {max_batch_size}
        queue_capacity = {queue_capacity}
        inline_max_rows = 0
        "#
    ))
    .unwrap()
}

struct Harness {
    model: Model,
    permits: mpsc::Sender<()>,
    batches: mpsc::Receiver<usize>,
    /// The name of the thread each batch ran on, in order.
    threads: Arc<Mutex<Vec<String>>>,
    /// What the background sessions ran: rows, thread, scheduling policy.
    background: Arc<Mutex<Vec<(usize, String, i32)>>>,
}

fn start(max_batch_size: usize, queue_capacity: usize) -> Harness {
    start_with(manifest(max_batch_size, queue_capacity))
}

fn start_with(manifest: Manifest) -> Harness {
    let max_batch_size = manifest.batching.max_batch_size;
    let (permit_tx, permit_rx) = mpsc::channel();
    let (batch_tx, batch_rx) = mpsc::channel();
    // Let the warm-up runs through.
    for _ in WARMUP {
        permit_tx.send(()).unwrap();
    }
    let threads = Arc::new(Mutex::new(Vec::new()));
    let background = Arc::new(Mutex::new(Vec::new()));
    let permits = Arc::new(Mutex::new(permit_rx));
    let factory: BackendFactory = {
        let (threads, background) = (threads.clone(), background.clone());
        let batch_tx = Mutex::new(batch_tx);
        Arc::new(move |lane| {
            Ok(match lane {
                Lane::Interactive => Box::new(Gated {
                    permits: permits.clone(),
                    batches: batch_tx.lock().unwrap().clone(),
                    threads: threads.clone(),
                }) as Box<dyn Backend>,
                Lane::Background => Box::new(Noting {
                    seen: background.clone(),
                }),
            })
        })
    };
    let model = Model::start(manifest, factory).unwrap();
    for rows in WARMUP {
        assert_eq!(
            batch_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a warm-up batch ran"),
            rows.unwrap_or(max_batch_size)
        );
    }
    Harness {
        model,
        permits: permit_tx,
        batches: batch_rx,
        threads,
        background,
    }
}

fn rows(values: &[f32]) -> Vec<Tensor> {
    vec![Tensor {
        name: "x".into(),
        shape: vec![values.len(), 1],
        data: TensorData::Fp32(values.to_vec()),
    }]
}

/// Runs `infer` for `values` (one row each) on its own task.
fn spawn_infer(
    model: &Model,
    values: &[f32],
    deadline: Option<Instant>,
) -> tokio::task::JoinHandle<Result<mercator_engine::InferOutput, EngineError>> {
    let (m, values) = (model.clone(), values.to_vec());
    tokio::spawn(async move { m.infer(rows(&values), deadline).await })
}

fn wait_for_queue(model: &Model, rows: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while model.queue_rows() != rows {
        assert!(Instant::now() < until, "queue never reached {rows} rows");
        std::thread::yield_now();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_are_batched_and_each_gets_its_own_rows() {
    let h = start(8, 100);
    // The first request occupies the worker; the next ones wait and then run together in one batch.
    let first = spawn_infer(&h.model, &[1.0], None);
    assert_eq!(
        h.batches
            .recv_timeout(Duration::from_secs(10))
            .expect("a batch ran"),
        1
    );
    let mut waiting = Vec::new();
    for i in 0..3 {
        let m = h.model.clone();
        let values = vec![10.0 * (i + 1) as f32, 10.0 * (i + 1) as f32 + 1.0];
        waiting.push((
            values.clone(),
            tokio::spawn(async move { m.infer(rows(&values), None).await }),
        ));
    }
    wait_for_queue(&h.model, 6);
    h.permits.send(()).unwrap();
    assert_eq!(
        h.batches
            .recv_timeout(Duration::from_secs(10))
            .expect("a batch ran"),
        6,
        "the three waiting requests form one batch of 6 rows"
    );
    h.permits.send(()).unwrap();
    assert_eq!(
        first.await.unwrap().unwrap().outputs[0].data,
        TensorData::Fp32(vec![2.0])
    );
    for (values, task) in waiting {
        let out = task.await.unwrap().unwrap();
        assert_eq!(out.timing.batch_rows, 6);
        let expected: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
        assert_eq!(out.outputs[0].data, TensorData::Fp32(expected));
        assert_eq!(out.outputs[0].shape, vec![2, 1]);
    }
    let stats = h.model.stats().snapshot();
    assert!(stats
        .batches
        .iter()
        .any(|b| b.batch_size == 6 && b.compute_infer.count == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_runs_nothing() {
    let h = start(4, 4);
    let busy = spawn_infer(&h.model, &[1.0], None);
    assert_eq!(
        h.batches
            .recv_timeout(Duration::from_secs(10))
            .expect("a batch ran"),
        1
    );
    let queued = spawn_infer(&h.model, &[1.0, 2.0, 3.0], None);
    wait_for_queue(&h.model, 3);
    // 3 rows wait, capacity is 4: two more rows do not fit.
    let refused = h.model.infer(rows(&[5.0, 6.0]), None).await;
    assert!(
        matches!(refused, Err(EngineError::QueueFull { capacity: 4, .. })),
        "{refused:?}"
    );
    // One more row fits.
    let fits = spawn_infer(&h.model, &[7.0], None);
    wait_for_queue(&h.model, 4);
    for _ in 0..2 {
        h.permits.send(()).unwrap();
    }
    assert!(busy.await.unwrap().is_ok());
    assert!(queued.await.unwrap().is_ok());
    assert_eq!(
        h.batches
            .recv_timeout(Duration::from_secs(10))
            .expect("a batch ran"),
        4,
        "the refused rows never ran"
    );
    assert!(fits.await.unwrap().is_ok());
    assert_eq!(h.model.stats().snapshot().fail.count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_caller_left_or_deadline_passed_never_run() {
    let h = start(8, 100);
    let busy = spawn_infer(&h.model, &[1.0], None);
    assert_eq!(
        h.batches
            .recv_timeout(Duration::from_secs(10))
            .expect("a batch ran"),
        1
    );
    let abandoned = spawn_infer(&h.model, &[2.0, 2.0], None);
    let late = tokio::spawn({
        let m = h.model.clone();
        async move {
            m.infer(
                rows(&[3.0, 3.0, 3.0]),
                Some(Instant::now() + Duration::from_millis(1)),
            )
            .await
        }
    });
    let kept = spawn_infer(&h.model, &[4.0], None);
    wait_for_queue(&h.model, 6);
    abandoned.abort();
    let _ = abandoned.await;
    std::thread::sleep(Duration::from_millis(5));
    h.permits.send(()).unwrap();
    h.permits.send(()).unwrap();
    assert!(busy.await.unwrap().is_ok());
    assert_eq!(
        h.batches
            .recv_timeout(Duration::from_secs(10))
            .expect("a batch ran"),
        1,
        "only the live, timely request runs"
    );
    assert!(matches!(
        late.await.unwrap(),
        Err(EngineError::DeadlineExceeded)
    ));
    assert_eq!(
        kept.await.unwrap().unwrap().outputs[0].data,
        TensorData::Fp32(vec![8.0])
    );
    assert_eq!(h.model.stats().snapshot().dropped, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_what_is_queued_and_refuses_new_work() {
    let h = start(2, 100);
    let mut tasks = Vec::new();
    for i in 0..5 {
        let m = h.model.clone();
        tasks.push(tokio::spawn(async move {
            m.infer(rows(&[i as f32]), None).await
        }));
        if i == 0 {
            assert_eq!(
                h.batches
                    .recv_timeout(Duration::from_secs(10))
                    .expect("a batch ran"),
                1
            );
        }
    }
    wait_for_queue(&h.model, 4);
    for _ in 0..3 {
        h.permits.send(()).unwrap();
    }
    let model = h.model.clone();
    let drained = tokio::task::spawn_blocking(move || model.drain(Duration::from_secs(10)));
    while h.model.is_ready() {
        tokio::task::yield_now().await;
    }
    let refused = h.model.infer(rows(&[9.0]), None).await;
    assert!(
        matches!(
            refused,
            Err(EngineError::NotReady { .. } | EngineError::ShuttingDown)
        ),
        "{refused:?}"
    );
    assert!(
        drained.await.unwrap(),
        "workers finished within the timeout"
    );
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(
            task.await.unwrap().unwrap().outputs[0].data,
            TensorData::Fp32(vec![2.0 * i as f32])
        );
    }
}

#[tokio::test]
async fn inputs_are_checked_against_the_manifest() {
    let h = start(4, 100);
    let cases: Vec<(Vec<Tensor>, &str)> = vec![
        (
            vec![Tensor {
                name: "x".into(),
                shape: vec![1, 1],
                data: TensorData::Int64(vec![1]),
            }],
            "datatype is INT64",
        ),
        (
            vec![Tensor {
                name: "x".into(),
                shape: vec![1, 2],
                data: TensorData::Fp32(vec![1.0, 2.0]),
            }],
            "shape is [1, 2]",
        ),
        (
            vec![Tensor {
                name: "z".into(),
                shape: vec![1, 1],
                data: TensorData::Fp32(vec![1.0]),
            }],
            "no such input",
        ),
        (vec![], "missing"),
        (
            vec![Tensor {
                name: "x".into(),
                shape: vec![0, 1],
                data: TensorData::Fp32(vec![]),
            }],
            "no rows",
        ),
    ];
    for (inputs, expected) in cases {
        let err = h.model.infer(inputs, None).await.unwrap_err();
        assert!(matches!(err, EngineError::InvalidInput { .. }), "{err:?}");
        assert!(
            err.to_string().contains(expected),
            "`{err}` should say `{expected}`"
        );
    }
    assert_eq!(DataType::parse("FP32"), Some(DataType::Fp32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_small_request_on_an_idle_model_runs_inline_and_busy_models_queue() {
    let mut m = manifest(8, 100);
    m.batching.inline_max_rows = 2;
    let h = start_with(m);
    // Idle model, empty queue: runs on the caller's thread, with no queue time.
    h.permits.send(()).unwrap();
    let out = h.model.infer(rows(&[3.0, 4.0]), None).await.unwrap();
    assert_eq!(
        h.batches
            .recv_timeout(Duration::from_secs(10))
            .expect("a batch ran"),
        2
    );
    assert_eq!(out.outputs[0].data, TensorData::Fp32(vec![6.0, 8.0]));
    let ran_on = |n: usize| h.threads.lock().unwrap()[n].clone();
    assert!(
        !ran_on(WARMUP.len()).starts_with("model-"),
        "ran on the caller's thread, not {}",
        ran_on(WARMUP.len())
    );
    // Too many rows for inline: goes to the worker.
    h.permits.send(()).unwrap();
    let out = h.model.infer(rows(&[1.0, 1.0, 1.0]), None).await.unwrap();
    assert_eq!(
        h.batches
            .recv_timeout(Duration::from_secs(10))
            .expect("a batch ran"),
        3
    );
    assert_eq!(out.timing.batch_rows, 3);
    assert!(
        ran_on(WARMUP.len() + 1).starts_with("model-double-1-"),
        "ran on the worker, not {}",
        ran_on(WARMUP.len() + 1)
    );
    // While the instance is busy, a lone row queues, and queued rows batch together.
    let busy = spawn_infer(&h.model, &[1.0, 1.0, 1.0], None);
    assert_eq!(
        h.batches
            .recv_timeout(Duration::from_secs(10))
            .expect("a batch ran"),
        3
    );
    let mut lone = Vec::new();
    for i in 0..2 {
        let m = h.model.clone();
        lone.push(tokio::spawn(async move {
            m.infer(rows(&[i as f32]), None).await
        }));
    }
    wait_for_queue(&h.model, 2);
    h.permits.send(()).unwrap();
    h.permits.send(()).unwrap();
    assert!(busy.await.unwrap().is_ok());
    assert_eq!(
        h.batches
            .recv_timeout(Duration::from_secs(10))
            .expect("a batch ran"),
        2,
        "the two lone rows that found the model busy ran as one batch"
    );
    for (i, t) in lone.into_iter().enumerate() {
        assert_eq!(
            t.await.unwrap().unwrap().outputs[0].data,
            TensorData::Fp32(vec![2.0 * i as f32])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_slices_run_on_their_own_idle_sessions_and_never_share_a_batch() {
    let h = start(8, 100);
    // The interactive session is busy with a first request while three job slices queue.
    let first = spawn_infer(&h.model, &[1.0], None);
    assert_eq!(h.batches.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
    let slices: Vec<_> = (0..3)
        .map(|k| {
            let values: Vec<f32> = (0..4).map(|i| (k * 10 + i) as f32).collect();
            (
                values.clone(),
                h.model.enqueue_background(rows(&values)).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        h.model.queue_rows(),
        0,
        "job rows do not count against the capacity"
    );
    // The slices are answered while the interactive session is still held: they have sessions of their own.
    let answers = tokio::task::spawn_blocking(move || {
        slices
            .into_iter()
            .map(|(values, pending)| (values, pending.wait().unwrap()))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (values, out) in answers {
        let doubled: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
        assert_eq!(out.outputs[0].data, TensorData::Fp32(doubled));
    }
    let seen = h.background.lock().unwrap().clone();
    // The warm-up batch of the background session, then the slices (at most 8 rows a batch).
    let (warmup, ran) = seen.split_first().expect("the background session ran");
    assert_eq!(
        warmup.0, 8,
        "a background session warms up with a full batch"
    );
    assert_eq!(ran.iter().map(|r| r.0).sum::<usize>(), 12);
    assert!(ran.iter().all(|r| r.0 <= 8));
    for (_, thread, policy) in &seen {
        assert!(thread.ends_with("-bg0"), "ran on {thread}");
        #[cfg(target_os = "linux")]
        assert_eq!(
            *policy,
            libc::SCHED_IDLE,
            "background work runs at idle priority"
        );
    }
    // Interactive rows keep to the interactive session.
    let interactive = spawn_infer(&h.model, &[7.0, 8.0], None);
    wait_for_queue(&h.model, 2);
    h.permits.send(()).unwrap();
    assert_eq!(h.batches.recv_timeout(Duration::from_secs(10)).unwrap(), 2);
    h.permits.send(()).unwrap();
    assert_eq!(
        interactive.await.unwrap().unwrap().outputs[0].data,
        TensorData::Fp32(vec![14.0, 16.0])
    );
    first.await.unwrap().unwrap();
    assert_eq!(
        h.background.lock().unwrap().len(),
        seen.len(),
        "no interactive row reached a background session"
    );
}

/// Rows go in one way: checked against the input's width, in slices of the batch size on the background
/// lane, every slice's outputs answered in the order the rows were added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_sliced_by_the_batch_size_and_answered_in_order() {
    let h = start(4, 100);
    assert_eq!(h.model.row_width(), Some(1));
    assert!(matches!(
        h.model.rows_input(vec![1.0, 2.0], 2),
        Err(EngineError::InvalidInput { .. })
    ));
    assert!(mercator_engine::Slices::new(&h.model, 3).is_err());
    let model = h.model.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let mut slices = mercator_engine::Slices::new(&model, 1).unwrap();
        for v in 0..10 {
            slices.push([v as f32]).unwrap();
        }
        slices.wait().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        answered.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [4, 4, 2],
        "slices of the batch size, the rest last"
    );
    let values: Vec<f32> = answered
        .iter()
        .flat_map(|(out, _)| match &out.outputs[0].data {
            TensorData::Fp32(v) => v.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(values, (0..10).map(|v| v as f32 * 2.0).collect::<Vec<_>>());
}
