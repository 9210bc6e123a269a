//! The raw ONNX Runtime ceiling of a batch job: the price model (version 2) run on batches of real feature
//! rows (the golden file's, repeated) by one session per thread (one intra-op thread each, no spinning), as
//! fast as it goes. Prints rows/s as JSON. Arguments: threads (2), batch rows (256), seconds (10).

use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::TensorRef;

fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (threads, batch, seconds) = (arg(1, 2) as usize, arg(2, 256) as usize, arg(3, 10));
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            mercator_benches::models_dir().join("../fixtures/golden/price-v2.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let input = &golden["inputs"][0];
    let width = input["shape"][1].as_u64().unwrap() as usize;
    let rows: Vec<f32> = input["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let data: Vec<f32> = rows.iter().copied().cycle().take(batch * width).collect();
    let runtime = mercator_engine::Runtime::load(None).unwrap();
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let done: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (runtime, data) = (&runtime, &data);
                scope.spawn(move || {
                    let mut session = Session::builder(runtime.environment())
                        .unwrap()
                        .with_intra_threads(1)
                        .unwrap()
                        .with_intra_op_spinning(false)
                        .unwrap()
                        .commit_from_file(mercator_benches::models_dir().join("price/2/model.onnx"))
                        .unwrap();
                    let mut rows = 0;
                    while Instant::now() < until {
                        let input =
                            TensorRef::from_array_view(([batch, width], data.as_slice())).unwrap();
                        let outputs = session.run(ort::inputs!["features" => input]).unwrap();
                        let (_, prices) = outputs["price"].try_extract_tensor::<f32>().unwrap();
                        assert_eq!(prices.len(), batch);
                        rows += batch;
                    }
                    rows
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let rate = done as f64 / started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"threads": threads, "batch": batch, "rows_per_sec": rate.round()})
    );
}
