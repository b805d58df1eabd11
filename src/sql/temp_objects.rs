//! Recognizing the statements that create a temporary object, the session
//! state transaction mode must never let reach another client: Postgres
//! gives every session its own temporary schema (`pg_temp`), which lives
//! as long as the server connection, not the client's transaction.
//!
//! A statement creates one when it is
//! - `CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP | TEMPORARY …` (tables,
//!   sequences, views), unless it is a table `ON COMMIT DROP`, which lives
//!   no longer than its transaction;
//! - any other `CREATE` that names something in `pg_temp` (`pg_temp.x`,
//!   `"pg_temp".x`, the real name `pg_temp_N.x`): tables, types, domains,
//!   functions, sequences, views, indexes on temporary tables;
//! - `SELECT … INTO [TEMP | TEMPORARY] [TABLE] name` (also after `WITH`),
//!   with the TEMP keyword or a `pg_temp`-qualified name.
//!
//! The text is read with the lexer that reads LISTEN statements, so string
//! literals, comments and quoted identifiers are what Postgres sees. What
//! a statement creates inside a function, a DO block or a procedure is not
//! visible in the text; the server-side check (`client/temp_backstop.rs`) covers
//! those.

use super::lex::{lex, Tok};

/// What the first statement of `sql` that creates a temporary object
/// creates, named for messages.
pub(crate) fn temp_object(sql: &str) -> Option<&'static str> {
    let (tokens, _) = lex(sql);
    tokens
        .split(|t| *t == Tok::Semi)
        .find_map(statement_creates)
}

fn statement_creates(stmt: &[Tok]) -> Option<&'static str> {
    let is = |i: usize, keyword: &str| word_is(stmt.get(i), keyword);
    if is(0, "create") {
        let mut i = 1;
        if is(i, "or") && is(i + 1, "replace") {
            i += 2;
        }
        if is(i, "global") || is(i, "local") {
            i += 1;
        }
        if is(i, "temp") || is(i, "temporary") {
            return (!on_commit_drop(stmt)).then_some("CREATE TEMPORARY");
        }
        return names_pg_temp(stmt).then_some("CREATE in schema pg_temp");
    }
    if is(0, "select") || is(0, "with") {
        let into = (0..stmt.len()).find(|&i| is(i, "into"))?;
        return select_into_temp(&stmt[into + 1..]);
    }
    None
}

/// What follows the INTO of a `SELECT … INTO`: a temporary table?
fn select_into_temp(after: &[Tok]) -> Option<&'static str> {
    let is = |i: usize, keyword: &str| word_is(after.get(i), keyword);
    let mut i = 0;
    if is(i, "global") || is(i, "local") {
        i += 1;
    }
    if is(i, "temp") || is(i, "temporary") {
        let name = if is(i + 1, "table") { i + 2 } else { i + 1 };
        // `INSERT INTO temp VALUES …` in a WITH names a table called temp.
        let a_new_name = match after.get(name) {
            Some(Tok::Word(w)) => !["values", "select", "default", "overriding", "as"]
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k)),
            Some(Tok::Quoted(_)) => true,
            _ => false,
        };
        return (a_new_name && after.get(name + 1) != Some(&Tok::Dot))
            .then_some("SELECT INTO TEMPORARY");
    }
    if is(i, "unlogged") {
        i += 1;
    }
    if is(i, "table") {
        i += 1;
    }
    (is_pg_temp(after.get(i)) && after.get(i + 1) == Some(&Tok::Dot))
        .then_some("SELECT INTO pg_temp")
}

fn word_is(t: Option<&Tok>, keyword: &str) -> bool {
    matches!(t, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(keyword))
}

/// `ON COMMIT DROP`: the table goes with its transaction.
fn on_commit_drop(stmt: &[Tok]) -> bool {
    stmt.windows(3).any(|w| {
        word_is(w.first(), "on") && word_is(w.get(1), "commit") && word_is(w.get(2), "drop")
    })
}

/// Some name in the statement is qualified by the temporary schema.
fn names_pg_temp(stmt: &[Tok]) -> bool {
    stmt.windows(2)
        .any(|w| is_pg_temp(w.first()) && w.get(1) == Some(&Tok::Dot))
}

/// `pg_temp` (any case unquoted, exactly so quoted) or the schema's real
/// name, `pg_temp_N`.
fn is_pg_temp(t: Option<&Tok>) -> bool {
    match t {
        Some(Tok::Word(w)) => {
            let w = w.to_ascii_lowercase();
            w == "pg_temp"
                || w.strip_prefix("pg_temp_")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        }
        Some(Tok::Quoted(q) | Tok::UnicodeQuoted(q)) => {
            q == "pg_temp"
                || q.strip_prefix("pg_temp_")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::temp_object;

    /// Every form the scanner must know, and whether it creates state.
    const FORMS: &[(&str, bool)] = &[
        ("create temp table t (a int)", true),
        ("CREATE TEMPORARY TABLE t (a int)", true),
        ("create local temp table t (a int)", true),
        ("CREATE GLOBAL TEMPORARY TABLE t (a int)", true),
        ("create temporary sequence s", true),
        ("create temp view v as select 1", true),
        ("create or replace temp view v as select 1", true),
        ("CREATE TEMP RECURSIVE VIEW v (n) AS SELECT 1", true),
        ("create temp table t as select 1 as a", true),
        ("CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS", true),
        ("create table pg_temp.t (a int)", true),
        ("CREATE TABLE PG_TEMP.t (a int)", true),
        ("create table \"pg_temp\".t (a int)", true),
        ("create table \"pg_temp\" . \"T\" (a int)", true),
        ("create table pg_temp_3.t (a int)", true),
        ("create unlogged table pg_temp.t (a int)", true),
        ("create table pg_temp.t as select 1", true),
        ("create type pg_temp.ty as (a int)", true),
        ("create type pg_temp.mood as enum ('a')", true),
        ("create domain pg_temp.d as int", true),
        (
            "create function pg_temp.f() returns int language sql as 'select 1'",
            true,
        ),
        (
            "create or replace function pg_temp.f() returns int as $$select 1$$ language sql",
            true,
        ),
        (
            "create procedure pg_temp.p() language sql as 'select 1'",
            true,
        ),
        ("create sequence pg_temp.s", true),
        ("create view pg_temp.v as select 1", true),
        ("create view v as select * from pg_temp.t", true),
        ("create index on pg_temp.t (a)", true),
        ("select 1 as a into temp t", true),
        ("SELECT 1 AS a INTO TEMPORARY t", true),
        ("select 1 as a into temp table t", true),
        ("select 1 as a into local temporary table \"t\"", true),
        ("select 1 as a into pg_temp.t", true),
        ("select 1 as a into table pg_temp.t", true),
        ("select 1 as a into unlogged table pg_temp.t", true),
        (
            "with x as (select 1 as a) select * into temp t from x",
            true,
        ),
        (
            "/* c */ CrEaTe -- d\n\t TEMP\n/* e */ TABLE t (a int)",
            true,
        ),
        ("create/**/temp/**/table t(a int)", true),
        ("select 1; create temp table t (a int)", true),
        (
            "begin; select 'x;y'; create table pg_temp.t (a int); commit",
            true,
        ),
        ("select $$;$$; create temp table t (a int)", true),
        // Transaction-scoped, ordinary, or not code at all.
        ("create temp table t (a int) on commit drop", false),
        ("CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", false),
        ("create table t (a int)", false),
        ("create table temp (a int)", false),
        ("create table pg_temp (a int)", false),
        ("create table \"PG_TEMP\".t (a int)", false),
        ("create table pg_temporary.t (a int)", false),
        ("create table pg_temp_x.t (a int)", false),
        (
            "create function f() returns int as 'create temp table t()' language sql",
            false,
        ),
        (
            "create function f() returns int as $$ select pg_temp.g() $$ language sql",
            false,
        ),
        ("select 'create temp table t (a int)'", false),
        ("select 1 -- ; create temp table t (a int)", false),
        ("select 1 /* ; create temp table t (a int) */", false),
        ("select \"create temp table t\" from x", false),
        ("select 1 into t", false),
        ("select 1 into public.t", false),
        ("select * from temp", false),
        ("select 1 as temp", false),
        ("insert into temp values (1)", false),
        (
            "with x as (select 1) insert into temp select * from x",
            false,
        ),
        ("with x as (select 1) insert into temp.t values (1)", false),
        ("select * from pg_temp.t", false),
        ("insert into pg_temp.t values (1)", false),
        ("drop table pg_temp.t", false),
        ("", false),
    ];

    #[test]
    fn knows_every_form_of_creating_a_temporary_object() {
        for &(sql, creates) in FORMS {
            assert_eq!(temp_object(sql).is_some(), creates, "{sql}");
            // The whole detection, cheap first look included.
            let found = crate::sql::session_state::detect(sql.as_bytes(), |_| false);
            assert_eq!(found.is_some(), creates, "{sql}");
        }
    }
}
