//! NVIDIA's Python `tritonclient[http]`, unchanged, against the real server: JSON and binary tensors,
//! model configuration and statistics. The test makes its own virtual environment (.venv-test).

mod common;

use std::path::Path;
use std::process::Command;

use common::{repo_root, venv_python, TestServer, ADMIN_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_infers_reads_config_and_statistics() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let server = TestServer::start().await;
    let host = server.base.trim_start_matches("http://").to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tritonclient_check.py");
    let golden = repo_root().join("fixtures/golden");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(host)
            .arg(golden)
            .env("MERCATOR_KEY", ADMIN_KEY)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("tritonclient ok"), "{stdout}");
}
