//! Times loading and indexing one long journal: `cargo run --release --example replay_load`.

use std::time::Instant;

use perdure_core::{Durability, OpType, Record, RecordKind, Runtime, RuntimeOptions, StoreOptions, SubType};

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = RuntimeOptions {
        store: StoreOptions {
            durability: Durability::None,
            ..StoreOptions::default()
        },
        ..RuntimeOptions::default()
    };
    let runtime = Runtime::open(dir.path(), options).expect("open");
    let (exec, _) = runtime.start("e", "wf", b"null".to_vec(), None).expect("start");
    let steps: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let records: Vec<Record> = (1..=steps)
        .map(|i| {
            let mut record = Record::new(RecordKind::Succeeded, OpType::Step, SubType::Step, i.to_string());
            record.attempt = 1;
            record.payload = Some(b"1".to_vec());
            record
        })
        .collect();
    runtime.append(exec, records, vec![], None, None).expect("append");
    for _ in 0..5 {
        let start = Instant::now();
        let data = runtime.load_invocation(exec).expect("load");
        let total = start.elapsed();
        println!(
            "load and index {:?} ({:.0} ns/record), {} ops, {:.0} records/s",
            total,
            total.as_nanos() as f64 / steps as f64,
            data.index.len(),
            steps as f64 / total.as_secs_f64()
        );
    }
}
