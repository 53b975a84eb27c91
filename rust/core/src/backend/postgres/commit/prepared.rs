//! The statements a writer's connection has prepared, by their SQL: a
//! group's statements are few and their text rarely varies (a group's size
//! goes in its array parameters, not its text), so after the first groups
//! each is bound and run without the server parsing and planning it again.

use std::collections::HashMap;

use postgres::types::{ToSql, Type};
use postgres::{Row, Statement, Transaction};

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

    /// The statement for `sql`, prepared now if it is new and there is room.
    fn statement(
        &mut self,
        txn: &mut Transaction<'_>,
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
        let statement = txn.prepare_typed(sql, &types)?;
        statements.insert(sql.to_string(), statement.clone());
        Ok(Some(statement))
    }

    /// The rows `sql` answers.
    pub(super) fn query(
        &mut self,
        txn: &mut Transaction<'_>,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, postgres::Error> {
        match self.statement(txn, sql, params)? {
            Some(statement) => txn.query(&statement, &values(params)),
            None => txn.query_typed(sql, params),
        }
    }

    /// How many rows `sql` changed.
    pub(super) fn execute(
        &mut self,
        txn: &mut Transaction<'_>,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64, postgres::Error> {
        match self.statement(txn, sql, params)? {
            Some(statement) => txn.execute(&statement, &values(params)),
            None => txn.execute_typed(sql, params),
        }
    }
}

fn values<'p>(params: &[(&'p (dyn ToSql + Sync), Type)]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|&(value, _)| value).collect()
}
