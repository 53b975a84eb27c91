//! The statements a writer's connection has prepared, by their SQL: a
//! group's statements are few and their text rarely varies (a group's size
//! goes in its array parameters, not its text), so after the first groups
//! each is bound and run without the server parsing and planning it again.
//!
//! A statement is prepared (a round trip, the first time) apart from its
//! run, so that runs can be pipelined: each is sent, whole, when first
//! polled, in the order polled.

use std::collections::HashMap;

use postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

/// How many statements one connection keeps prepared, at most; past that,
/// a new text is sent to be parsed each time (as with no cache).
const MAX_PREPARED: usize = 256;

/// The statements prepared on one connection, or (`none`) a connection
/// whose statements are not kept.
pub(super) struct Prepared {
    statements: Option<HashMap<String, Statement>>,
}

impl Prepared {
    /// Statements kept: for a connection that commits group after group.
    pub(super) fn kept() -> Prepared {
        Prepared {
            statements: Some(HashMap::new()),
        }
    }

    /// Nothing kept: each statement goes as text with its parameters, in
    /// one round trip (preparing it would cost another).
    pub(super) fn none() -> Prepared {
        Prepared { statements: None }
    }

    /// The statement for `sql`, prepared now if it is new and there is room
    /// (`None`: run it as text, [`query`] and [`execute`] tell).
    pub(super) async fn statement(
        &mut self,
        client: &Client,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<Statement>, postgres::Error> {
        let Some(statements) = self.statements.as_mut() else {
            return Ok(None);
        };
        if let Some(statement) = statements.get(sql) {
            return Ok(Some(statement.clone()));
        }
        if statements.len() >= MAX_PREPARED {
            return Ok(None);
        }
        let types: Vec<Type> = params.iter().map(|(_, sql_type)| sql_type.clone()).collect();
        let statement = client.prepare_typed(sql, &types).await?;
        statements.insert(sql.to_string(), statement.clone());
        Ok(Some(statement))
    }
}

/// The rows `sql` answers, run as `statement` where prepared, else as
/// text with its parameters (in one round trip all the same).
pub(super) async fn query(
    client: &Client,
    statement: Option<&Statement>,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<Row>, postgres::Error> {
    match statement {
        Some(statement) => client.query(statement, &values(params)).await,
        None => client.query_typed(sql, params).await,
    }
}

/// How many rows `sql` changed (run as [`query`] runs it).
pub(super) async fn execute(
    client: &Client,
    statement: Option<&Statement>,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<u64, postgres::Error> {
    match statement {
        Some(statement) => client.execute(statement, &values(params)).await,
        None => client.execute_typed(sql, params).await,
    }
}

fn values<'p>(params: &[(&'p (dyn ToSql + Sync), Type)]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|&(value, _)| value).collect()
}
