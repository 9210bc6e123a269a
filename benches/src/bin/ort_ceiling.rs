//! The raw ONNX Runtime ceiling of a batch job: the price model (version 2) run on batches of real feature
//! rows by one session per thread (one intra-op thread each, no spinning), as fast as it goes. Prints rows/s
//! as JSON. Arguments: threads (2), batch rows (256), seconds (10), and a CSV of feature rows whose last
//! columns are the model's input (`mercator features materialize` writes one); without it, the golden
//! file's 8 rows repeated, which a tree model's branches learn and so run unrealistically fast.

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
    let rows = match std::env::args().nth(4) {
        Some(path) => std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .skip(1)
            .flat_map(|line| {
                let cells: Vec<&str> = line.split(',').collect();
                cells[cells.len() - width..]
                    .iter()
                    .map(|c| c.parse::<f32>().unwrap_or(f32::NAN))
                    .collect::<Vec<_>>()
            })
            .collect(),
        None => rows,
    };
    let distinct = rows.len() / width;
    // Every batch different: the rows taken in turn, from where the last batch ended.
    let batches: Vec<Vec<f32>> = (0..distinct.div_ceil(batch).max(1))
        .map(|b| {
            (0..batch)
                .flat_map(|r| {
                    let row = (b * batch + r) % distinct;
                    rows[row * width..(row + 1) * width].iter().copied()
                })
                .collect()
        })
        .collect();
    let runtime = mercator_engine::Runtime::load(None).unwrap();
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let done: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (runtime, batches) = (&runtime, &batches);
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
                    for data in batches.iter().cycle() {
                        if Instant::now() >= until {
                            break;
                        }
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
        serde_json::json!({"threads": threads, "batch": batch, "distinct_rows": distinct,
            "rows_per_sec": rate.round()})
    );
}
