//! Durable appends per second through the PostgreSQL store's `PgWriter`,
//! beside what the same server does with plain INSERTs through the same crate:
//!
//! ```text
//! bash -c 'source scripts/postgres.sh; start_test_postgres;
//!          cargo run --release -p perdure-core --example pg_commit_rate'
//! ```
//!
//! (a) one fenced append per group, one group after another; (b) groups of
//! 64 batches, each a fence and an append to an execution of its own: each
//! through an unprepared `PgWriter` (statements sent as text) and through
//! the store's `PgWriter` (statements kept prepared on its connection); then
//! the raw baselines: single-row autocommit INSERTs of a 100-byte bytea, and
//! 64-row INSERTs, one transaction each. Every commit is synced (the
//! server's default `synchronous_commit = on`) unless `--unsynced` is given
//! (`cargo run ... -- --unsynced`). The server is
//! `PERDURE_TEST_PG`; the tables live in a scratch schema, dropped at the end.

use std::time::{Duration, Instant};

use perdure_core::backend::postgres::commit::PgWriter;
use perdure_core::backend::postgres::reads::PgReads;
use perdure_core::backend::postgres::{schema, PgLocation};
use perdure_core::backend::{Mutation, Outcome};
use perdure_core::keys::OwnerEntry;
use perdure_core::{OpType, Record, RecordKind, SubType};

const OWNER: u64 = 0xB0;
const WIDTH: usize = 64;
const SEQUENTIAL: usize = 2_000;
const FOR: Duration = Duration::from_secs(3);

fn main() {
    let url = std::env::var("PERDURE_TEST_PG").expect("PERDURE_TEST_PG names the server (scripts/postgres.sh)");
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).unwrap();
    let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let sep = if url.contains('?') { '&' } else { '?' };
    let location = PgLocation::parse(&format!("{url}{sep}schema=bench_{name}")).unwrap();
    let mut client = location.connect().unwrap();
    schema::ensure(&mut client, &location).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut client, &location)));
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", location.schema()))
        .unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// `--unsynced`: commits not waiting for the disk (`synchronous_commit =
/// off`), to see the costs of the round trips and the server's work apart
/// from the disk's.
fn synced() -> bool {
    !std::env::args().any(|arg| arg == "--unsynced")
}

fn step(n: usize) -> Record {
    let mut record = Record::new(RecordKind::Succeeded, OpType::Step, SubType::Step, n.to_string());
    record.payload = Some(vec![b'x'; 100]);
    record.timestamp_ms = 1_000;
    record
}

fn commit(writer: &mut PgWriter, group: &[Vec<Mutation>]) -> Vec<Vec<Outcome>> {
    writer
        .commit(group)
        .unwrap()
        .into_iter()
        .map(|answer| answer.unwrap())
        .collect()
}

fn run(client: &mut postgres::Client, location: &PgLocation) {
    let reads = PgReads::connect(location).unwrap();
    let mut unprepared = PgWriter::unprepared(location).unwrap();
    commit(
        &mut unprepared,
        &[vec![Mutation::RegisterOwner {
            owner: OWNER,
            entry: OwnerEntry {
                pid: 1,
                started_ms: 1_000,
                renewed_ms: 1_000,
            },
        }]],
    );
    let created = commit(
        &mut unprepared,
        &(0..WIDTH)
            .map(|i| {
                vec![Mutation::CreateExecution {
                    execution_id: format!("e{i}"),
                    function: "wf".into(),
                    started: step(0),
                    owner: Some(OWNER),
                    parent: None,
                    deadline_ms: None,
                }]
            })
            .collect::<Vec<_>>(),
    );
    let execs: Vec<(u64, perdure_core::backend::Lease)> = created
        .iter()
        .map(|outcomes| match outcomes[0] {
            Outcome::Created { exec_key, .. } => (exec_key, reads.lease(exec_key).unwrap().unwrap()),
            ref other => panic!("{other:?}"),
        })
        .collect();
    let batch = |(exec_key, lease): (u64, perdure_core::backend::Lease), n: usize| {
        vec![
            Mutation::Fence { exec_key, lease },
            Mutation::Append {
                exec_key,
                record: step(n),
            },
        ]
    };

    let mut n = 1;
    let mut writer = PgWriter::connect(location).unwrap();
    if !synced() {
        client.batch_execute("SET synchronous_commit = off").unwrap();
        unprepared.batch_execute("SET synchronous_commit = off").unwrap();
        writer.batch_execute("SET synchronous_commit = off").unwrap();
    }
    let mut rates = Vec::new();
    for prepared in [false, true] {
        let mut commit = |group: &[Vec<Mutation>]| {
            let answers = match prepared {
                false => unprepared.commit(group),
                true => writer.commit(group),
            };
            for answer in answers.unwrap() {
                answer.unwrap();
            }
        };
        let how = if prepared { "PgWriter  " } else { "unprepared" };
        let start = Instant::now();
        for _ in 0..SEQUENTIAL {
            commit(&[batch(execs[0], n)]);
            n += 1;
        }
        let sequential = SEQUENTIAL as f64 / start.elapsed().as_secs_f64();
        println!("(a) {how}, 1 fenced append per group:     {sequential:>9.0} appends/s");
        let start = Instant::now();
        let mut appends = 0usize;
        while start.elapsed() < FOR {
            let group: Vec<Vec<Mutation>> = execs.iter().map(|&exec| batch(exec, n)).collect();
            commit(&group);
            appends += WIDTH;
            n += 1;
        }
        let grouped = appends as f64 / start.elapsed().as_secs_f64();
        println!("(b) {how}, {WIDTH} batches per group:          {grouped:>9.0} appends/s");
        rates.push((sequential, grouped));
    }
    let (sequential, grouped) = rates[0];
    let (sequential_prepared, grouped_prepared) = rates[1];

    let s = location.schema();
    client
        .batch_execute(&format!(
            "CREATE TABLE {s}.raw (id bigserial PRIMARY KEY, v bytea NOT NULL)"
        ))
        .unwrap();
    let value = vec![b'x'; 100];
    let single = client.prepare(&format!("INSERT INTO {s}.raw (v) VALUES ($1)")).unwrap();
    let start = Instant::now();
    for _ in 0..SEQUENTIAL {
        client.execute(&single, &[&value]).unwrap();
    }
    let raw_single = SEQUENTIAL as f64 / start.elapsed().as_secs_f64();
    println!("raw: single-row autocommit INSERT:              {raw_single:>9.0} rows/s");

    let values: Vec<String> = (1..=WIDTH).map(|i| format!("(${i})")).collect();
    let multi = client
        .prepare(&format!("INSERT INTO {s}.raw (v) VALUES {}", values.join(", ")))
        .unwrap();
    let params: Vec<&(dyn postgres::types::ToSql + Sync)> = (0..WIDTH).map(|_| &value as _).collect();
    let start = Instant::now();
    let mut rows = 0usize;
    while start.elapsed() < FOR {
        client.execute(&multi, &params).unwrap();
        rows += WIDTH;
    }
    let raw_multi = rows as f64 / start.elapsed().as_secs_f64();
    println!("raw: {WIDTH}-row INSERT, one transaction each:     {raw_multi:>9.0} rows/s");
    println!(
        "ratios: (a)/raw single {:.2} (PgWriter {:.2}), (b)/raw {WIDTH}-row {:.2} (PgWriter {:.2}), (b)/(a) {:.1}",
        sequential / raw_single,
        sequential_prepared / raw_single,
        grouped / raw_multi,
        grouped_prepared / raw_multi,
        grouped / sequential
    );
}
