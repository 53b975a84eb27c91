//! The PostgreSQL store's schema on a real server (see `common`).

mod common;

use common::Scratch;
use perdure_core::backend::postgres::schema::{ensure, SCHEMA_VERSION};
use perdure_core::backend::postgres::PgLocation;
use perdure_core::error::Error;

fn tables(client: &mut postgres::Client, schema: &str) -> Vec<String> {
    client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'S') ORDER BY 1",
            &[&schema],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[test]
fn a_new_store_gets_every_table_and_its_version() {
    let Some(scratch) = Scratch::new() else { return };
    let mut client = scratch.client();
    assert_eq!(ensure(&mut client, &scratch.location).unwrap(), 0);
    let schema = scratch.location.schema();
    assert_eq!(
        tables(&mut client, schema),
        [
            "callbacks",
            "executions",
            "executions_exec_key_seq", // the identity column's
            "journal",
            "lease_epoch",
            "meta",
            "owners",
            "timers",
            "wake_seq"
        ]
    );
    let version: String = client
        .query_one(
            &format!("SELECT value FROM {schema}.meta WHERE key = 'schema_version'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION.to_string());
    // Opening it again finds it, changes nothing.
    assert_eq!(ensure(&mut client, &scratch.location).unwrap(), SCHEMA_VERSION);
    assert_eq!(tables(&mut client, schema).len(), 9);
}

#[test]
fn many_hosts_creating_the_store_at_once_make_one() {
    let Some(scratch) = Scratch::new() else { return };
    let found: Vec<u32> = std::thread::scope(|scope| {
        let opens: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| ensure(&mut scratch.client(), &scratch.location).unwrap()))
            .collect();
        opens.into_iter().map(|open| open.join().unwrap()).collect()
    });
    assert_eq!(found.iter().filter(|&&version| version == 0).count(), 1, "{found:?}");
    assert!(found.iter().all(|&version| version == 0 || version == SCHEMA_VERSION));
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let Some(scratch) = Scratch::new() else { return };
    let mut client = scratch.client();
    ensure(&mut client, &scratch.location).unwrap();
    let schema = scratch.location.schema();
    let newer = (SCHEMA_VERSION + 1).to_string();
    client
        .execute(
            &format!("UPDATE {schema}.meta SET value = $1 WHERE key = 'schema_version'"),
            &[&newer],
        )
        .unwrap();
    match ensure(&mut client, &scratch.location) {
        Err(Error::SchemaVersion { found, supported, .. }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaVersion, got {other:?}"),
    }
    let kept: String = client
        .query_one(
            &format!("SELECT value FROM {schema}.meta WHERE key = 'schema_version'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(kept, newer);
}

#[test]
fn a_schema_holding_other_tables_is_not_taken() {
    let Some(scratch) = Scratch::new() else { return };
    let mut client = scratch.client();
    let schema = scratch.location.schema();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.orders (id int)"
        ))
        .unwrap();
    let err = ensure(&mut client, &scratch.location).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("not a perdure store"), "{err}");
    assert_eq!(tables(&mut client, schema), ["orders"]);
}

#[test]
fn a_damaged_version_is_reported_not_guessed() {
    let Some(scratch) = Scratch::new() else { return };
    let mut client = scratch.client();
    ensure(&mut client, &scratch.location).unwrap();
    let schema = scratch.location.schema();
    client
        .execute(
            &format!("UPDATE {schema}.meta SET value = 'five' WHERE key = 'schema_version'"),
            &[],
        )
        .unwrap();
    let err = ensure(&mut client, &scratch.location).unwrap_err();
    assert!(matches!(err, Error::CorruptStore(_)), "{err:?}");
}

#[test]
fn an_unreachable_server_is_a_clear_error_without_the_password() {
    let location = PgLocation::parse("postgresql://me:s3cret@localhost/db?host=/nonexistent&port=1").unwrap();
    let Err(err) = location.connect() else {
        panic!("connected to a server that is not there")
    };
    assert!(matches!(err, Error::Postgres { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("cannot connect") && !text.contains("s3cret"), "{text}");
}
