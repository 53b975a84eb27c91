//! The tables of a PostgreSQL store, created and upgraded by perdure itself
//! and versioned like the LMDB format (docs/format.md, "PostgreSQL store").
//!
//! They hold what LMDB's databases hold, folded into rows: an execution's
//! metadata, id, lease (owner and epoch), orphan mark and pending wake-up are
//! one `executions` row; journal records are the same bytes as LMDB's.

use postgres::Client;

use super::PgLocation;
use crate::error::{Error, Result};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Version 1, `{s}` standing for the schema. Numbers perdure keeps as u64
/// (exec keys, owner ids, epochs, times in ms) are `bigint`: owner ids are
/// stored bit for bit (a random id may read as negative in SQL); times and
/// counters stay far below 2^63. `fillfactor` leaves room for the HOT
/// updates a step makes (it changes `next_seq` and `updated_ms`, which no
/// index covers).
const CREATE_V1: &str = r#"
CREATE TABLE {s}.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE {s}.owners (
    owner_id   bigint PRIMARY KEY,
    epoch      bigint NOT NULL,
    host       text NOT NULL,
    pid        bigint NOT NULL,
    started_at timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL
);
CREATE TABLE {s}.executions (
    exec_key     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id text NOT NULL UNIQUE,
    function     text NOT NULL,
    state        smallint NOT NULL CHECK (state BETWEEN 1 AND 5),
    created_ms   bigint NOT NULL,
    updated_ms   bigint NOT NULL,
    parent_key   bigint,
    parent_op    text,
    owner_id     bigint,
    lease_epoch  bigint NOT NULL DEFAULT 0,
    next_seq     integer NOT NULL DEFAULT 0,
    wake         bigint,
    CHECK ((parent_key IS NULL) = (parent_op IS NULL))
) WITH (fillfactor = 80);
CREATE INDEX executions_runnable ON {s}.executions (owner_id, exec_key) WHERE wake IS NOT NULL;
CREATE INDEX executions_orphans ON {s}.executions (exec_key) WHERE state = 1 AND owner_id IS NULL;
CREATE INDEX executions_leased ON {s}.executions (owner_id) WHERE state = 1;
CREATE INDEX executions_children ON {s}.executions (parent_key) WHERE parent_key IS NOT NULL;
CREATE TABLE {s}.journal (
    exec_key bigint NOT NULL,
    seq      integer NOT NULL CHECK (seq >= 0),
    record   bytea NOT NULL,
    PRIMARY KEY (exec_key, seq)
);
CREATE TABLE {s}.timers (
    due_ms   bigint NOT NULL,
    exec_key bigint NOT NULL,
    kind     smallint NOT NULL CHECK (kind BETWEEN 1 AND 4),
    subject  text NOT NULL,
    PRIMARY KEY (due_ms, exec_key, kind, subject)
);
CREATE INDEX timers_of_execution ON {s}.timers (exec_key);
CREATE TABLE {s}.callbacks (
    callback_id          text PRIMARY KEY,
    exec_key             bigint NOT NULL,
    op_id                text NOT NULL,
    state                smallint NOT NULL CHECK (state BETWEEN 0 AND 4),
    deadline_ms          bigint NOT NULL,
    heartbeat_timeout_ms bigint NOT NULL,
    last_heartbeat_ms    bigint NOT NULL
);
CREATE SEQUENCE {s}.wake_seq;
CREATE SEQUENCE {s}.lease_epoch;
"#;

/// Whether the store at `location` exists (its schema holds perdure's
/// tables): what commands that only read ask before they open it, so that
/// a mistyped schema is an error rather than a new, empty store.
pub fn exists(location: &PgLocation) -> Result<bool> {
    let mut client = location.connect()?;
    let meta_table = format!("{}.meta", location.schema());
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&meta_table])
        .map_err(location.failed("cannot look for the store"))?;
    Ok(row.get(0))
}

/// Creates the store's schema and tables, or checks and upgrades the ones
/// there; returns the version found before (0: created now). Safe to run
/// from many hosts at once: the work is one transaction under an advisory
/// lock named after the schema.
pub fn ensure(client: &mut Client, location: &PgLocation) -> Result<u32> {
    let schema = location.schema();
    let failed = |what: &str| {
        let what = format!("{what} (schema {schema} of {})", location.shown());
        move |source| Error::Postgres { what, source }
    };
    let mut txn = client.transaction().map_err(failed("cannot begin"))?;
    txn.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("perdure schema {schema}")],
    )
    .map_err(failed("cannot lock the schema"))?;
    let meta_table = format!("{schema}.meta");
    let has_meta: bool = txn
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&meta_table])
        .map_err(failed("cannot look for the store"))?
        .get(0);
    let found = if has_meta {
        let row = txn
            .query_opt(
                &format!("SELECT value FROM {schema}.meta WHERE key = 'schema_version'"),
                &[],
            )
            .map_err(failed("cannot read the schema version"))?;
        let text: Option<String> = row.map(|row| row.get(0));
        text.as_deref()
            .and_then(|text| text.parse::<u32>().ok())
            .ok_or_else(|| {
                Error::CorruptStore(format!(
                    "{}: schema {schema} has a meta table without a readable schema_version",
                    location.shown()
                ))
            })?
    } else {
        let others: i64 = txn
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
                &[&schema],
            )
            .map_err(failed("cannot look into the schema"))?
            .get(0);
        if others > 0 {
            return Err(Error::InvalidInput(format!(
                "{}: schema {schema} holds {others} tables or other objects that are not a perdure store; \
                 name another schema with ?schema=",
                location.shown()
            )));
        }
        txn.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};{}",
            CREATE_V1.replace("{s}", schema)
        ))
        .map_err(failed("cannot create the store's tables"))?;
        txn.execute(
            &format!("INSERT INTO {schema}.meta (key, value) VALUES ('schema_version', $1)"),
            &[&SCHEMA_VERSION.to_string()],
        )
        .map_err(failed("cannot record the schema version"))?;
        0
    };
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaVersion {
            location: location.shown().to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    // Upgrades from older versions go here, in order, as the schema grows.
    txn.commit().map_err(failed("cannot commit"))?;
    Ok(found)
}
