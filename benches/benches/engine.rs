//! criterion: the raw ONNX Runtime call of each shipped model at batch 1, 64 and 1024 (the floor every
//! serving figure is compared to), and what the scheduler adds per request on top of a backend call.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mercator_engine::{
    Backend, BackendError, BackendFactory, Manifest, Model, OrtBackend, Runtime, Tensor, TensorData,
};
use ort::session::Session;
use ort::value::TensorRef;

fn golden_inputs(model: &str, rows: usize) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let path = mercator_benches::models_dir().join(format!("../fixtures/golden/{model}.json"));
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    golden["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let width = i["shape"][1].as_u64().unwrap() as usize;
            let data: Vec<f32> = i["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let cycled = data.iter().copied().cycle().take(rows * width).collect();
            (
                i["name"].as_str().unwrap().to_string(),
                vec![rows, width],
                cycled,
            )
        })
        .collect()
}

fn session(runtime: &Runtime, model: &str) -> Session {
    Session::builder(runtime.environment())
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .with_intra_op_spinning(false)
        .unwrap()
        .commit_from_file(mercator_benches::models_dir().join(format!("{model}/1/model.onnx")))
        .unwrap()
}

fn raw_ort(c: &mut Criterion) {
    let runtime = Runtime::load(None).unwrap();
    for model in ["price", "anomaly", "forecast"] {
        let mut group = c.benchmark_group(format!("raw_ort/{model}"));
        let mut session = session(&runtime, model);
        for rows in [1usize, 64, 1024] {
            let inputs = golden_inputs(model, rows);
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_with_input(BenchmarkId::from_parameter(rows), &inputs, |b, inputs| {
                b.iter(|| {
                    let values: Vec<(String, TensorRef<'_, f32>)> = inputs
                        .iter()
                        .map(|(name, shape, data)| {
                            (
                                name.clone(),
                                TensorRef::from_array_view((shape.clone(), data.as_slice()))
                                    .unwrap(),
                            )
                        })
                        .collect();
                    let outputs = session.run(values).unwrap();
                    black_box(outputs[0].try_extract_tensor::<f32>().unwrap().1[0]);
                })
            });
        }
        group.finish();
    }
}

/// Answers at once: isolates the scheduler (validation, queue or inline path, worker wake-up, oneshot).
struct Echo;

impl Backend for Echo {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
        let rows = inputs[0].rows();
        Ok(vec![Tensor {
            name: "price".into(),
            shape: vec![rows, 1],
            data: TensorData::Fp32(vec![1.0; rows]),
        }])
    }
}

fn scheduler(c: &mut Criterion) {
    let runtime = Runtime::load(None).unwrap();
    let manifest_path = mercator_benches::models_dir().join("price/1/model.toml");
    let manifest = Manifest::from_file(&manifest_path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let row = golden_inputs("price", 1).remove(0);
    let request = || {
        vec![Tensor {
            name: row.0.clone(),
            shape: row.1.clone(),
            data: TensorData::Fp32(row.2.clone()),
        }]
    };

    let mut group = c.benchmark_group("scheduler");
    let mut queued = manifest.clone();
    queued.batching.inline_max_rows = 0;
    for (path, manifest) in [("queue", &queued), ("default", &manifest)] {
        let echo =
            Model::start(manifest.clone(), Arc::new(|_| Ok(Box::new(Echo) as Box<_>))).unwrap();
        group.bench_function(format!("echo_backend/{path}"), |b| {
            b.iter(|| rt.block_on(echo.infer(request(), None)).unwrap());
        });
        let onnx = Path::new(&manifest_path).with_file_name("model.onnx");
        let factory: BackendFactory = {
            let (runtime, manifest) = (runtime.clone(), manifest.clone());
            Arc::new(move |_| Ok(Box::new(OrtBackend::load(&runtime, &onnx, &manifest)?) as Box<_>))
        };
        let price = Model::start(manifest.clone(), factory).unwrap();
        group.bench_function(format!("price_batch_1/{path}"), |b| {
            b.iter(|| rt.block_on(price.infer(request(), None)).unwrap());
        });
        price.drain(std::time::Duration::from_secs(5));
        echo.drain(std::time::Duration::from_secs(5));
    }
    group.finish();
}

criterion_group!(benches, raw_ort, scheduler);
criterion_main!(benches);
