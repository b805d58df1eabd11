//! Hand-written conversations: the protocol paths drivers take, and every
//! point of the fidelity issue (21). Each runs in session mode and in
//! transaction mode (`session_state = "pin"`, a pool smaller than the
//! clients unless the case says why not); `{m}` in names becomes the mode,
//! so both can run at once against one Postgres.

use super::conversation::Conversation;
use super::runner::{check, Mode};

/// One test per mode for each case: `case::in_session_mode` and
/// `case::in_transaction_mode`, each with its own attributes (`#[ignore]`).
macro_rules! cases {
    ($($case:ident { session: [$(#[$s:meta])*], transaction: [$(#[$t:meta])*] })*) => {$(
        mod $case {
            use super::*;

            $(#[$s])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_session_mode() {
                check($case(), Mode::Session).await;
            }

            $(#[$t])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_transaction_mode() {
                check($case(), Mode::Transaction).await;
            }
        }
    )*};
}

cases! {
    a_plain_simple_query { session: [], transaction: [] }
    a_multi_statement_query_stops_at_its_error { session: [], transaction: [] }
    an_extended_pipeline_of_named_and_unnamed_statements_and_portals { session: [], transaction: [] }
    an_error_in_mid_pipeline_skips_to_sync { session: [], transaction: [] }
    flush_sends_the_replies_so_far_without_a_sync { session: [], transaction: [] }
    savepoints_roll_back_part_of_a_transaction { session: [], transaction: [] }
    set_set_local_and_reset_follow_each_client { session: [], transaction: [] }
    sql_prepare_execute_and_deallocate { session: [], transaction: [] }
    copy_in_with_a_sync_sent_during_the_copy {
        session: [],
        transaction: []
    }
    copy_out_in_simple_and_extended_protocol { session: [], transaction: [] }
    copy_fail_ends_a_copy_in { session: [], transaction: [] }
    listen_and_notify_to_oneself { session: [], transaction: [] }
    listen_and_notify_in_one_query { session: [], transaction: [] }
    asyncpg_reset_query_on_release {
        session: [],
        transaction: []
    }
    deallocate_all_after_a_protocol_prepare_then_prepare_again { session: [], transaction: [] }
    a_pg_temp_table_is_used_in_a_later_transaction {
        session: [],
        transaction: []
    }
    two_clients_interleaved_prepare_the_same_text { session: [], transaction: [] }
    a_column_type_change_under_a_prepared_statement { session: [], transaction: [] }
    a_parse_of_a_statement_name_in_use_is_refused { session: [], transaction: [] }
    a_parse_of_a_name_in_use_is_refused_when_another_client_has_the_text { session: [], transaction: [] }
    a_parse_of_a_failing_statement_reports_its_error { session: [], transaction: [] }
    a_parse_skipped_after_an_error_is_not_taken_as_prepared { session: [], transaction: [] }
    a_parse_after_an_error_in_its_pipeline_is_skipped { session: [], transaction: [] }
    a_bind_of_a_missing_unnamed_statement_is_refused { session: [], transaction: [] }
    an_unnamed_statement_lives_until_the_next_query { session: [], transaction: [] }
    errors_about_a_statement_name_the_clients_own_statement { session: [], transaction: [] }
    a_fresh_statement_is_planned_for_its_first_parameters { session: [], transaction: [] }
    a_parse_in_a_failed_transaction_is_refused { session: [], transaction: [] }
    two_clients_hold_a_statement_whose_result_type_changes { session: [], transaction: [] }
    a_fresh_prepare_after_its_type_was_created_again { session: [], transaction: [] }
    a_fresh_prepare_answered_without_a_server_after_its_type_was_created_again { session: [], transaction: [] }
    a_fresh_prepare_after_its_table_was_created_again { session: [], transaction: [] }
    a_parse_skipped_after_a_failed_execute_leaves_no_statement { session: [], transaction: [] }
    an_error_names_a_statement_closed_later_in_the_pipeline { session: [], transaction: [] }
    a_second_parse_of_a_name_then_its_close { session: [], transaction: [] }
    a_parse_again_of_a_name_whose_parse_was_skipped { session: [], transaction: [] }
    a_close_and_parse_after_a_group_whose_close_was_skipped { session: [], transaction: [] }
    an_unnamed_parse_skipped_after_a_failed_execute_leaves_none { session: [], transaction: [] }
    an_unnamed_parse_in_the_next_group_stands_after_one_was_skipped { session: [], transaction: [] }
    a_bind_in_a_failed_transaction_checks_its_parameters_first { session: [], transaction: [] }
    a_bind_in_a_failed_transaction_of_a_described_statement { session: [], transaction: [] }
    a_bind_pipelined_after_a_group_that_fails_its_transaction { session: [], transaction: [] }
    a_statement_whose_first_bind_was_skipped_binds_in_the_next_group { session: [], transaction: [] }
    errors_name_the_right_one_of_two_names_for_one_text { session: [], transaction: [] }
    a_bind_after_a_group_whose_close_was_skipped { session: [], transaction: [] }
    an_unnamed_statement_of_an_earlier_transaction_after_a_skipped_bind { session: [], transaction: [] }
    a_close_skipped_after_an_error_keeps_the_statement { session: [], transaction: [] }
    a_prepared_discard_all_drops_only_its_own_clients_statements { session: [], transaction: [] }
    a_prepared_deallocate_all_drops_only_its_own_clients_statements { session: [], transaction: [] }
    an_unnamed_discard_all_drops_only_its_own_clients_statements { session: [], transaction: [] }
    a_bind_of_a_missing_unnamed_statement_after_an_error_is_skipped { session: [], transaction: [] }
    a_failed_unnamed_parse_leaves_no_unnamed_statement { session: [], transaction: [] }
    a_failed_unnamed_parse_after_a_good_one_leaves_none { session: [], transaction: [] }
    an_unnamed_parse_that_fails_after_a_bind_of_its_group_leaves_none { session: [], transaction: [] }
    an_unnamed_parse_of_a_failed_transaction_stays_on_its_server { session: [], transaction: [] }
    unnamed_parses_skipped_in_two_pipelined_groups_leave_none { session: [], transaction: [] }
    unnamed_parses_skipped_after_a_bind_and_an_execute_leave_none { session: [], transaction: [] }
    a_long_pipeline_of_unnamed_parses_binds_and_executes { session: [], transaction: [] }
    an_unlisten_committed_with_a_notify_hears_nothing { session: [], transaction: [] }
    an_unlisten_in_a_block_commits_with_the_blocks_notify { session: [], transaction: [] }
    a_notify_to_oneself_arrives_before_the_next_query_unlistens { session: [], transaction: [] }
    a_notify_then_unlisten_all_while_another_client_waits { session: [], transaction: [] }
    a_bind_in_the_next_group_after_a_skipped_close_and_an_unnamed_parse { session: [], transaction: [] }
    an_error_names_the_closed_one_of_two_names_for_one_text { session: [], transaction: [] }
    an_error_names_the_first_of_two_names_for_one_text_when_the_second_comes_later { session: [], transaction: [] }
    unlisten_all_then_listen_in_one_query_hears_its_notify { session: [], transaction: [] }
    copy_messages_after_a_failed_copy_are_ignored { session: [], transaction: [] }
    an_unnamed_parse_confirmed_before_a_later_one_is_skipped_stays_on_its_server { session: [], transaction: [] }
}

pub fn a_plain_simple_query() -> Conversation {
    Conversation::new("a_plain_simple_query", 1)
        .simple("SELECT 1 AS one, 'two'::text AS two, NULL::int AS nothing")
        .simple("SELECT g, repeat('x', g * 1000) FROM generate_series(1, 3) AS g")
        .simple("SELECT 1 WHERE false")
        .simple("")
        .simple(";")
        .terminate()
}

pub fn a_multi_statement_query_stops_at_its_error() -> Conversation {
    Conversation::new("a_multi_statement_query_stops_at_its_error", 1)
        .before_each_run("DROP TABLE IF EXISTS conf_multi_{m}")
        .simple("CREATE TABLE conf_multi_{m} (a int)")
        .simple(
            "INSERT INTO conf_multi_{m} VALUES (1); SELECT 1/0; INSERT INTO conf_multi_{m} VALUES (2)",
        )
        .simple("SELECT count(*) FROM conf_multi_{m}; SELECT 'second'")
        .simple("SELECT 1; SELEC 2; SELECT 3")
}

pub fn an_extended_pipeline_of_named_and_unnamed_statements_and_portals() -> Conversation {
    Conversation::new(
        "an_extended_pipeline_of_named_and_unnamed_statements_and_portals",
        1,
    )
    .parse("s_named", "SELECT $1::int AS n, $2::text AS t", &[])
    .parse("", "SELECT g FROM generate_series(1, 5) AS g", &[])
    .describe_statement("s_named")
    .describe_statement("")
    .bind("p_named", "s_named", &["7", "seven"])
    .bind_full("", "", &[], true)
    .describe_portal("p_named")
    .describe_portal("")
    .execute("", 2)
    .execute("", 0)
    .execute("p_named", 0)
    .sync()
    .ready()
    // The named portal ended with the transaction; the statement lives on.
    .bind("", "s_named", &["8", "eight"])
    .execute("", 0)
    .execute("p_named", 0)
    .sync()
    .ready()
    .bind("", "s_named", &["9", "nine"])
    .execute("", 0)
    .close_statement("s_named")
    .close_portal("")
    .sync()
    .run("s_named", &["10", "ten"])
    .ready()
    .parse("s_typed", "SELECT $1 AS x", &[25])
    .describe_statement("s_typed")
    .bind_full("", "s_typed", &[None], false)
    .execute("", 0)
    .sync()
    .ready()
}

pub fn an_error_in_mid_pipeline_skips_to_sync() -> Conversation {
    Conversation::new("an_error_in_mid_pipeline_skips_to_sync", 1)
        .parse("", "SELECT 1", &[])
        .bind("", "", &[])
        .execute("", 0)
        .parse("", "SELEC 2", &[])
        .bind("", "", &[])
        .execute("", 0)
        .prepare("s_after", "SELECT 3")
        .run("s_after", &[])
        .parse("s_div", "SELECT 10 / $1::int AS q", &[])
        .bind("", "s_div", &["0"])
        .execute("", 0)
        .bind("", "s_div", &["5"])
        .execute("", 0)
        .sync()
        .run("s_div", &["2"])
        .ready()
        .describe_statement("no_such_statement")
        .sync()
        .ready()
        .execute("no_such_portal", 0)
        .sync()
        .ready()
}

pub fn flush_sends_the_replies_so_far_without_a_sync() -> Conversation {
    Conversation::new("flush_sends_the_replies_so_far_without_a_sync", 1)
        .parse("s_f", "SELECT 42 AS answer", &[])
        .bind("", "s_f", &[])
        .describe_portal("")
        .execute("", 0)
        .flush()
        .replies(5)
        .bind("", "s_f", &[])
        .execute("", 0)
        .flush()
        .quiet(300)
        .sync()
        .ready()
        .parse("", "SELECT 1/0", &[])
        .bind("", "", &[])
        .execute("", 0)
        .flush()
        .quiet(300)
        .run("s_f", &[])
}

pub fn savepoints_roll_back_part_of_a_transaction() -> Conversation {
    Conversation::new("savepoints_roll_back_part_of_a_transaction", 1)
        .before_each_run("DROP TABLE IF EXISTS conf_sp_{m}")
        .simple("CREATE TABLE conf_sp_{m} (a int)")
        .simple("BEGIN")
        .simple("INSERT INTO conf_sp_{m} VALUES (1)")
        .simple("SAVEPOINT sp1")
        .simple("INSERT INTO conf_sp_{m} VALUES (2)")
        .simple("SELECT 1/0")
        .simple("SELECT 1")
        .simple("ROLLBACK TO SAVEPOINT sp1")
        .simple("INSERT INTO conf_sp_{m} VALUES (3)")
        .simple("RELEASE SAVEPOINT sp1")
        .simple("COMMIT")
        .simple("SELECT a FROM conf_sp_{m} ORDER BY a")
        .simple("COMMIT")
        .simple("BEGIN; SELECT 1/0; COMMIT")
        .simple("ROLLBACK")
        .simple("BEGIN")
        .simple("SELECT 1/0")
        .simple("COMMIT")
}

/// Two clients over a pool of one: each one's parameters must follow it
/// to the server it lands on.
pub fn set_set_local_and_reset_follow_each_client() -> Conversation {
    let show = "SELECT current_setting('application_name'), \
                '2024-02-29 13:45:00+00'::timestamptz, '2024-02-29'::date";
    Conversation::new("set_set_local_and_reset_follow_each_client", 2)
        .on(0)
        .simple("SET application_name = 'conf_zero'")
        .simple("SET DateStyle = 'SQL, DMY'")
        .on(1)
        .simple("SET TimeZone = 'Asia/Tokyo'")
        .simple(show)
        .on(0)
        .simple(show)
        .simple("BEGIN")
        .simple("SET LOCAL TimeZone = 'America/New_York'")
        .simple(show)
        .simple("COMMIT")
        .simple("SHOW TimeZone")
        .simple("RESET DateStyle")
        .simple(show)
        .on(1)
        .simple(show)
        .simple("RESET TimeZone")
        .simple("SET application_name TO DEFAULT")
        .simple(show)
        .on(0)
        .simple("RESET application_name")
        .simple(show)
}

pub fn sql_prepare_execute_and_deallocate() -> Conversation {
    Conversation::new("sql_prepare_execute_and_deallocate", 1)
        .simple("PREPARE conf_q(int) AS SELECT $1 + 1 AS next")
        .simple("EXECUTE conf_q(41)")
        .parse("", "EXECUTE conf_q(1)", &[])
        .bind("", "", &[])
        .describe_portal("")
        .execute("", 0)
        .sync()
        .ready()
        .simple("PREPARE conf_q(int) AS SELECT 0")
        .simple("DEALLOCATE conf_q")
        .simple("EXECUTE conf_q(1)")
        .simple("DEALLOCATE PREPARE conf_q")
        .simple("PREPARE conf_q AS SELECT 'again'")
        .simple("EXECUTE conf_q")
}

/// tokio-postgres's `copy_in`: the Sync after Execute reaches Postgres in
/// COPY-in mode, where it is owed no reply.
pub fn copy_in_with_a_sync_sent_during_the_copy() -> Conversation {
    Conversation::new("copy_in_with_a_sync_sent_during_the_copy", 1)
        .before_each_run("DROP TABLE IF EXISTS conf_copy_in_{m}")
        .simple("CREATE TABLE conf_copy_in_{m} (a int, b text)")
        .parse("s_copy", "COPY conf_copy_in_{m} FROM STDIN", &[])
        .describe_statement("s_copy")
        .sync()
        .ready()
        .bind("", "s_copy", &[])
        .execute("", 0)
        .sync()
        .replies(2)
        .copy_data("1\tone\n")
        .copy_data("2\ttwo\n")
        .copy_done()
        .sync()
        .close_statement("s_copy")
        .sync()
        .ready()
        .ready()
        .simple("SELECT * FROM conf_copy_in_{m} ORDER BY a")
        .query("COPY conf_copy_in_{m} FROM STDIN")
        .replies(1)
        .copy_data("3\tthree\n")
        .flush()
        .sync()
        .copy_done()
        .ready()
        .simple("SELECT count(*) FROM conf_copy_in_{m}")
}

pub fn copy_out_in_simple_and_extended_protocol() -> Conversation {
    let sql = "COPY (SELECT g, 'row ' || g FROM generate_series(1, 3) AS g) TO STDOUT";
    Conversation::new("copy_out_in_simple_and_extended_protocol", 1)
        .simple(sql)
        .parse("", sql, &[])
        .run("", &[])
        .simple("COPY (SELECT 1/0) TO STDOUT")
        .simple("SELECT 'after'")
}

pub fn copy_fail_ends_a_copy_in() -> Conversation {
    Conversation::new("copy_fail_ends_a_copy_in", 1)
        .before_each_run("DROP TABLE IF EXISTS conf_copy_fail_{m}")
        .simple("CREATE TABLE conf_copy_fail_{m} (a int)")
        .query("COPY conf_copy_fail_{m} FROM STDIN")
        .replies(1)
        .copy_data("1\n")
        .copy_fail("the client changed its mind")
        .ready()
        // Extended protocol: the Sync sent with Execute arrives during the
        // copy and is ignored, so after the error Postgres waits for another.
        .parse("", "COPY conf_copy_fail_{m} FROM STDIN", &[])
        .bind("", "", &[])
        .execute("", 0)
        .sync()
        .replies(3)
        .copy_data("2\n")
        .copy_fail("again")
        .sync()
        .ready()
        .query("COPY conf_copy_fail_{m} FROM STDIN")
        .replies(1)
        .copy_data("not a number\n")
        .copy_done()
        .ready()
        .simple("SELECT count(*) FROM conf_copy_fail_{m}")
}

pub fn listen_and_notify_to_oneself() -> Conversation {
    Conversation::new("listen_and_notify_to_oneself", 1)
        .simple("LISTEN conf_ch_{m}")
        .simple("NOTIFY conf_ch_{m}, 'one'")
        .simple("SELECT pg_notify('conf_ch_{m}', 'two')")
        .simple("BEGIN")
        .simple("NOTIFY conf_ch_{m}, 'three'")
        .simple("NOTIFY conf_ch_{m}, 'three'")
        .simple("COMMIT")
        .simple("BEGIN")
        .simple("NOTIFY conf_ch_{m}, 'rolled back'")
        .simple("ROLLBACK")
        .parse("", "NOTIFY conf_ch_{m}, 'extended'", &[])
        .run("", &[])
        .simple("SELECT 'last'")
}

pub fn listen_and_notify_in_one_query() -> Conversation {
    Conversation::new("listen_and_notify_in_one_query", 1)
        .simple("LISTEN conf_one_{m}; NOTIFY conf_one_{m}, 'hi'")
        .simple("SELECT 'after'")
        .simple("UNLISTEN conf_one_{m}; SELECT 1")
        .simple("LISTEN conf_one_{m}; SELECT 1/0")
        .simple("NOTIFY conf_one_{m}, 'not listened'")
}

/// asyncpg runs this on every connection it puts back in its pool.
pub fn asyncpg_reset_query_on_release() -> Conversation {
    Conversation::new("asyncpg_reset_query_on_release", 1)
        .simple("LISTEN conf_reset_{m}")
        .simple("SET application_name = 'conf_reset'")
        .simple("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;")
        .simple("SHOW application_name")
        .simple("NOTIFY conf_reset_{m}, 'after unlisten'")
        .simple("SELECT 'after'")
}

/// psycopg 3 sends DEALLOCATE ALL while it holds prepared statements.
pub fn deallocate_all_after_a_protocol_prepare_then_prepare_again() -> Conversation {
    Conversation::new(
        "deallocate_all_after_a_protocol_prepare_then_prepare_again",
        1,
    )
    .prepare("s1", "SELECT 1 AS a")
    .run("s1", &[])
    .simple("DEALLOCATE ALL")
    .run("s1", &[])
    .prepare("s1", "SELECT 1 AS a")
    .run("s1", &[])
}

/// Client 1 holds a transaction open while client 0 comes back to its
/// temp table: with a pool of one they would wait for each other, so this
/// one has a pool of two (the first server must not be handed to client 1).
pub fn a_pg_temp_table_is_used_in_a_later_transaction() -> Conversation {
    let visible = "SELECT count(*) FROM pg_class \
                   WHERE relname = 'conf_temp_{m}' AND pg_table_is_visible(oid)";
    Conversation::new("a_pg_temp_table_is_used_in_a_later_transaction", 2)
        .tx_pool(2)
        .on(0)
        .simple("CREATE TABLE pg_temp.conf_temp_{m} (a int)")
        .simple("INSERT INTO pg_temp.conf_temp_{m} VALUES (1)")
        .on(1)
        .simple("BEGIN")
        .simple(visible)
        .on(0)
        .simple("BEGIN")
        .simple("SELECT a FROM pg_temp.conf_temp_{m}")
        .simple("COMMIT")
        .on(1)
        .simple("SELECT a FROM pg_temp.conf_temp_{m}")
        .simple("COMMIT")
        .simple(visible)
        .on(0)
        .simple(visible)
}

/// psycopg 3 with `prepare_threshold = 0` prepares every statement, its
/// `DISCARD ALL` or `DEALLOCATE ALL` too: run through the extended
/// protocol, it drops the client's own statements (then its own, which
/// psycopg binds again: 26000) and never another client's on the shared
/// server.
fn drops_all_beside_another_client(name: &str, reset: &str, statement: &str) -> Conversation {
    let sql = "SELECT $1::int * 2 AS twice";
    let c = Conversation::new(name, 2)
        .on(0)
        .prepare("s1", sql)
        .run("s1", &["1"])
        .on(1)
        .prepare("s1", sql)
        .prepare("s2", "SELECT 'other' AS t")
        .run("s1", &["2"]);
    let c = if statement.is_empty() {
        c.parse("", reset, &[]).run("", &[])
    } else {
        c.prepare(statement, reset).run(statement, &[])
    };
    let c = c
        .on(0)
        .run("s1", &["3"])
        .on(1)
        .run("s1", &["4"])
        .run("s2", &[]);
    let c = if statement.is_empty() {
        c
    } else {
        c.run(statement, &[])
    };
    c.prepare("s1", sql)
        .run("s1", &["5"])
        .on(0)
        .run("s1", &["6"])
}

pub fn a_prepared_discard_all_drops_only_its_own_clients_statements() -> Conversation {
    drops_all_beside_another_client(
        "a_prepared_discard_all_drops_only_its_own_clients_statements",
        "DISCARD ALL",
        "_pg3_1",
    )
}

pub fn a_prepared_deallocate_all_drops_only_its_own_clients_statements() -> Conversation {
    drops_all_beside_another_client(
        "a_prepared_deallocate_all_drops_only_its_own_clients_statements",
        "DEALLOCATE ALL",
        "_pg3_1",
    )
}

pub fn an_unnamed_discard_all_drops_only_its_own_clients_statements() -> Conversation {
    drops_all_beside_another_client(
        "an_unnamed_discard_all_drops_only_its_own_clients_statements",
        "DISCARD ALL",
        "",
    )
}

pub fn two_clients_interleaved_prepare_the_same_text() -> Conversation {
    let sql = "SELECT $1::int + 1 AS next";
    Conversation::new("two_clients_interleaved_prepare_the_same_text", 2)
        .on(0)
        .parse("s1", sql, &[])
        .describe_statement("s1")
        .sync()
        .ready()
        .on(1)
        .prepare("s1", sql)
        .on(0)
        .run("s1", &["1"])
        .on(1)
        .bind("", "s1", &["10"])
        .execute("", 0)
        .close_statement("s1")
        .sync()
        .ready()
        .on(0)
        .run("s1", &["2"])
        .on(1)
        .run("s1", &["3"])
        .parse("", sql, &[])
        .run("", &["5"])
}

pub fn a_column_type_change_under_a_prepared_statement() -> Conversation {
    let sql = "SELECT * FROM conf_retype_{m}";
    Conversation::new("a_column_type_change_under_a_prepared_statement", 1)
        .before_each_run("DROP TABLE IF EXISTS conf_retype_{m}")
        .simple("CREATE TABLE conf_retype_{m} (a int, b int)")
        .simple("INSERT INTO conf_retype_{m} VALUES (1, 2)")
        .parse("s1", sql, &[])
        .describe_statement("s1")
        .sync()
        .ready()
        .run("s1", &[])
        .simple("ALTER TABLE conf_retype_{m} ALTER COLUMN b TYPE real")
        .bind_full("", "s1", &[], true)
        .execute("", 0)
        .sync()
        .ready()
        .close_statement("s1")
        .parse("s1", sql, &[])
        .describe_statement("s1")
        .bind_full("", "s1", &[], true)
        .execute("", 0)
        .sync()
        .ready()
}

/// Two clients hold the same text over a pool of one when the column's
/// type changes: each gets the error once its statement is stale, never
/// rows of the new type under the old description.
pub fn two_clients_hold_a_statement_whose_result_type_changes() -> Conversation {
    let sql = "SELECT * FROM conf_retype2_{m}";
    let run = |c: Conversation| {
        c.bind_full("", "s1", &[], true)
            .execute("", 0)
            .sync()
            .ready()
    };
    let c = Conversation::new("two_clients_hold_a_statement_whose_result_type_changes", 2)
        .before_each_run("DROP TABLE IF EXISTS conf_retype2_{m}")
        .on(0)
        .simple("CREATE TABLE conf_retype2_{m} (a int, b int)")
        .simple("INSERT INTO conf_retype2_{m} VALUES (1, 2)")
        .parse("s1", sql, &[])
        .describe_statement("s1")
        .sync()
        .ready();
    let c = run(c);
    let c = c
        .on(1)
        .parse("s1", sql, &[])
        .describe_statement("s1")
        .sync()
        .ready();
    let c = run(c)
        .on(0)
        .simple("ALTER TABLE conf_retype2_{m} ALTER COLUMN b TYPE real");
    let c = run(run(c).on(1));
    let c = c
        .on(0)
        .close_statement("s1")
        .parse("s1", sql, &[])
        .describe_statement("s1")
        .sync()
        .ready();
    let c = run(run(c).on(1));
    run(c.close_statement("s1").prepare("s1", sql))
}

/// Found by the generator: a Parse of a statement name already in use.
pub fn a_parse_of_a_statement_name_in_use_is_refused() -> Conversation {
    Conversation::new("a_parse_of_a_statement_name_in_use_is_refused", 1)
        .parse("s0", "SELECT $1::int + 1 AS next", &[])
        .prepare("s0", "SELECT $1::int + 1 AS next")
        .prepare("s1", "SELECT 1")
        .prepare("s1", "SELECT 2")
}

/// Found by the generator: client 1 binds the unnamed statement it never
/// prepared, while client 0's unnamed statement is on the shared server.
pub fn a_bind_of_a_missing_unnamed_statement_is_refused() -> Conversation {
    Conversation::new("a_bind_of_a_missing_unnamed_statement_is_refused", 2)
        .on(0)
        .prepare("", "SELECT 'client zero' AS whose")
        .on(1)
        .run("", &[])
}

/// The unnamed statement belongs to its client across transactions (over
/// a pool of one another client's unnamed Parse replaces it on the
/// server), until a simple Query destroys it.
pub fn an_unnamed_statement_lives_until_the_next_query() -> Conversation {
    Conversation::new("an_unnamed_statement_lives_until_the_next_query", 2)
        .on(0)
        .prepare("", "SELECT 'client zero' AS whose")
        .on(1)
        .prepare("", "SELECT 'client one' AS whose, 1 AS n")
        .on(0)
        .describe_statement("")
        .sync()
        .ready()
        .run("", &[])
        .on(1)
        .run("", &[])
        .simple("SELECT 'a query'")
        .run("", &[])
        .on(0)
        .close_statement("")
        .sync()
        .ready()
        .run("", &[])
}

/// Found by the generator: Postgres's errors about a statement name it.
pub fn errors_about_a_statement_name_the_clients_own_statement() -> Conversation {
    Conversation::new("errors_about_a_statement_name_the_clients_own_statement", 1)
        .prepare("s1", "SELECT $1::int AS x")
        .run("s1", &[])
        .prepare("s1", "SELECT 2")
}

/// Found by the generator: a statement a client prepares afresh is planned
/// for its first parameters (a custom plan), where an error from
/// constant folding comes at Bind; a server statement planned generically
/// for another client's earlier executions raises it at Execute.
pub fn a_fresh_statement_is_planned_for_its_first_parameters() -> Conversation {
    let sql = "SELECT 10 / $1::int AS q";
    let mut c = Conversation::new("a_fresh_statement_is_planned_for_its_first_parameters", 2)
        .on(0)
        .prepare("s0", sql);
    for _ in 0..6 {
        c = c.run("s0", &["1"]);
    }
    c.on(1).parse("s0", sql, &[]).run("s0", &["0"])
}

/// Found by the generator: a Parse inside a failed transaction.
pub fn a_parse_in_a_failed_transaction_is_refused() -> Conversation {
    Conversation::new("a_parse_in_a_failed_transaction_is_refused", 1)
        .prepare("s1", "SELECT 1 AS one")
        .close_statement("s1")
        .sync()
        .ready()
        .simple("BEGIN")
        .simple("SELECT 1/0")
        .prepare("s1", "SELECT 1 AS one")
        .simple("ROLLBACK")
        .run("s1", &[])
}

/// Found by the generator: the same, when the text is already prepared on
/// the server for another client.
pub fn a_parse_of_a_name_in_use_is_refused_when_another_client_has_the_text() -> Conversation {
    let sql = "SELECT $1::int + 1 AS next";
    Conversation::new(
        "a_parse_of_a_name_in_use_is_refused_when_another_client_has_the_text",
        2,
    )
    .on(0)
    .prepare("s0", sql)
    .on(1)
    .parse("s0", sql, &[])
    .prepare("s0", sql)
}

/// Found by the generator: a named Parse whose text Postgres refuses, by
/// two clients in turn.
pub fn a_parse_of_a_failing_statement_reports_its_error() -> Conversation {
    let sql = "SELECT * FROM conf_no_such_table";
    Conversation::new("a_parse_of_a_failing_statement_reports_its_error", 2)
        .on(0)
        .prepare("s1", sql)
        .prepare("s1", sql)
        .on(1)
        .prepare("s1", sql)
        .run("s1", &[])
}

/// Found by the generator: a Parse that Postgres skipped (an earlier
/// message of its pipeline failed) must not count as prepared.
pub fn a_parse_skipped_after_an_error_is_not_taken_as_prepared() -> Conversation {
    let sql = "SELECT * FROM conf_no_such_table";
    Conversation::new("a_parse_skipped_after_an_error_is_not_taken_as_prepared", 2)
        .on(0)
        .parse("", "SELEC 1", &[])
        .parse("s0", sql, &[])
        .parse("s1", "SELECT 5 AS five", &[])
        .sync()
        .ready()
        .on(1)
        .prepare("s1", sql)
        .prepare("s0", "SELECT 5 AS five")
        .run("s0", &[])
}

/// Found by the generator: after an error, Postgres skips every message
/// up to Sync, a Parse of a text pgharbor knows included.
pub fn a_parse_after_an_error_in_its_pipeline_is_skipped() -> Conversation {
    let sql = "SELECT $1::int + 1 AS next";
    Conversation::new("a_parse_after_an_error_in_its_pipeline_is_skipped", 1)
        .prepare("s0", sql)
        .execute("", 1)
        .parse("s1", sql, &[])
        .sync()
        .ready()
        .execute("", 1)
        .flush()
        .quiet(300)
        .parse("s1", sql, &[])
        .sync()
        .ready()
        .run("s1", &["1"])
}

/// Issue 21 point 5: a type dropped and created again under a statement
/// another client prepared; a new client's Parse of the same text runs
/// with the new type, as a fresh Parse on Postgres does, never the
/// statement planned for the old one (`cache lookup failed for type`).
/// (Type OIDs differ between runs, so nothing here shows one.)
pub fn a_fresh_prepare_after_its_type_was_created_again() -> Conversation {
    type_created_again("a_fresh_prepare_after_its_type_was_created_again", false)
}

/// The same when the new client's Parse is answered before it holds a
/// server (a Parse and Sync of a text pgharbor knows): its first Bind
/// prepares the statement afresh.
pub fn a_fresh_prepare_answered_without_a_server_after_its_type_was_created_again() -> Conversation
{
    type_created_again(
        "a_fresh_prepare_answered_without_a_server_after_its_type_was_created_again",
        true,
    )
}

/// Client 1 prepares the text client 0 prepared before its type was
/// created again: in the group that binds it, or alone (`alone`).
fn type_created_again(name: &str, alone: bool) -> Conversation {
    let ty = format!("conf_{}_{{m}}", if alone { "mood2" } else { "mood" });
    let sql = format!("SELECT $1::{ty}::text AS mood");
    let c = Conversation::new(name, 2)
        .before_each_run(&format!("DROP TYPE IF EXISTS {ty}"))
        .on(0)
        .simple(&format!("CREATE TYPE {ty} AS ENUM ('sad', 'happy')"))
        .prepare("s1", &sql)
        .run("s1", &["happy"])
        .simple(&format!("DROP TYPE {ty}"))
        .simple(&format!("CREATE TYPE {ty} AS ENUM ('calm', 'angry')"))
        .on(1);
    let c = if alone {
        c.prepare("s1", &sql)
    } else {
        c.parse("s1", &sql, &[])
    };
    c.run("s1", &["calm"]).run("s1", &["angry"])
}

/// A table created again with another column type under a statement
/// another client prepared: a new client's Parse and Describe of the same
/// text give the parameter types of the new table, as on Postgres.
pub fn a_fresh_prepare_after_its_table_was_created_again() -> Conversation {
    let sql = "SELECT count(*) AS n FROM conf_again_{m} WHERE b = $1";
    Conversation::new("a_fresh_prepare_after_its_table_was_created_again", 2)
        .before_each_run("DROP TABLE IF EXISTS conf_again_{m}")
        .on(0)
        .simple("CREATE TABLE conf_again_{m} (b int)")
        .prepare("s1", sql)
        .run("s1", &["1"])
        .simple("DROP TABLE conf_again_{m}")
        .simple("CREATE TABLE conf_again_{m} (b text)")
        .on(1)
        .parse("s1", sql, &[])
        .describe_statement("s1")
        .bind("", "s1", &["x"])
        .execute("", 0)
        .sync()
        .ready()
}

/// Found by the generator: the second Parse of s1 fails (42P05, naming
/// s1), so Postgres skips the Close after it, and s1 lives on.
pub fn a_close_skipped_after_an_error_keeps_the_statement() -> Conversation {
    Conversation::new("a_close_skipped_after_an_error_keeps_the_statement", 1)
        .parse("s1", "SELECT repeat('y', $1::int) AS big", &[])
        .parse("s1", "SELECT $1::timestamptz AS ts", &[])
        .close_statement("s1")
        .sync()
        .ready()
        .run("s1", &["3"])
}

/// Found by the generator: after an error Postgres skips a Bind of an
/// unnamed statement the client does not have, rather than refusing it.
pub fn a_bind_of_a_missing_unnamed_statement_after_an_error_is_skipped() -> Conversation {
    Conversation::new(
        "a_bind_of_a_missing_unnamed_statement_after_an_error_is_skipped",
        1,
    )
    .execute("", 0)
    .flush()
    .quiet(150)
    .bind("", "", &[])
    .sync()
    .ready()
}

/// Found by the generator (seed 0x5eed0026, on a pgharbor where another
/// client had prepared the same text): Postgres skips every message after
/// an error up to the Sync, Parse included.
pub fn a_parse_skipped_after_a_failed_execute_leaves_no_statement() -> Conversation {
    Conversation::new(
        "a_parse_skipped_after_a_failed_execute_leaves_no_statement",
        2,
    )
    .on(1)
    .prepare("s9", "SELECT $1::text || '!' AS shout")
    .on(0)
    .execute("p0", 0)
    .parse("s0", "SELECT $1::text || '!' AS shout", &[])
    .sync()
    .bind_full("", "s0", &[Some("4")], true)
    .sync()
    .ready()
    .ready()
}

/// Found by the generator (seed 0x5eed002d).
pub fn an_error_names_a_statement_closed_later_in_the_pipeline() -> Conversation {
    Conversation::new("an_error_names_a_statement_closed_later_in_the_pipeline", 1)
        .on(0)
        .parse("s0", "SELECT $1::text || '!' AS shout", &[])
        .bind_full("", "s0", &[None, Some("1")], true)
        .sync()
        .close_statement("s0")
        .sync()
        .ready()
        .ready()
}

/// Found by the generator (seed 0x5eed0026): the second Parse must not
/// be taken for one of a live name (42P05) while the first may yet be
/// skipped.
pub fn a_parse_again_of_a_name_whose_parse_was_skipped() -> Conversation {
    Conversation::new("a_parse_again_of_a_name_whose_parse_was_skipped", 1)
        .on(0)
        .execute("p0", 0)
        .parse("s0", "SELECT $1::text || '!' AS shout", &[])
        .sync()
        .parse("s0", "SELECT $1::int + 1 AS next", &[23])
        .sync()
        .ready()
        .ready()
        .run("s0", &["41"])
}

/// Found by the generator (seed 0x5eed002b): the first group's Close and
/// Parse are skipped, so its statement stays until the second group's
/// Close, whose Parse then succeeds.
pub fn a_close_and_parse_after_a_group_whose_close_was_skipped() -> Conversation {
    Conversation::new("a_close_and_parse_after_a_group_whose_close_was_skipped", 1)
        .on(0)
        .prepare("s0", "SELECT 1 AS one")
        .execute("p0", 0)
        .close_statement("s0")
        .parse("s0", "SELECT 2 AS two", &[])
        .sync()
        .close_statement("s0")
        .parse("s0", "SELECT 3 AS three", &[])
        .sync()
        .ready()
        .ready()
        .run("s0", &[])
}

/// Found by the generator (seeds 0x5eed002c, 0x5eed0030): the unnamed
/// Parse is skipped, so the Bind finds no unnamed statement (26000), not
/// one another client left on the server; once waited for, once pipelined.
pub fn an_unnamed_parse_skipped_after_a_failed_execute_leaves_none() -> Conversation {
    Conversation::new(
        "an_unnamed_parse_skipped_after_a_failed_execute_leaves_none",
        2,
    )
    .on(1)
    .parse("", "SELECT $1::int AS strict", &[])
    .bind("", "", &["1"])
    .execute("", 0)
    .sync()
    .ready()
    .on(0)
    .execute("", 0)
    .parse("", "SELECT $1::int AS strict", &[])
    .sync()
    .ready()
    .bind("", "", &[])
    .sync()
    .ready()
    .execute("", 0)
    .parse("", "SELECT $1::int AS strict", &[])
    .sync()
    .bind("", "", &[])
    .sync()
    .ready()
    .ready()
    .execute("", 0)
    .parse("", "SELECT $1::int AS strict", &[])
    .bind_full("", "", &[], true)
    .sync()
    .bind("", "", &["2"])
    .sync()
    .ready()
    .ready()
}

/// Found by the generator (seed 0x5eed002e).
pub fn an_unnamed_parse_in_the_next_group_stands_after_one_was_skipped() -> Conversation {
    Conversation::new(
        "an_unnamed_parse_in_the_next_group_stands_after_one_was_skipped",
        1,
    )
    .on(0)
    .execute("", 1)
    .parse("", "SELECT $1::int + 1 AS next", &[])
    .sync()
    .parse("", "SELECT $1 AS untyped", &[25])
    .sync()
    .ready()
    .ready()
    .bind("", "", &["it's"])
    .execute("", 0)
    .sync()
    .ready()
}

/// Found by the generator (seeds 0x5eed002d, 0x5eed0030, 0x5eed004c): a
/// client that prepares one text under two names; errors about either
/// name that one.
pub fn errors_name_the_right_one_of_two_names_for_one_text() -> Conversation {
    let sql = "SELECT $1::text || '!' AS shout";
    Conversation::new("errors_name_the_right_one_of_two_names_for_one_text", 1)
        .on(0)
        .prepare("s1", sql)
        .prepare("s0", sql)
        .bind_full("", "s0", &[None, Some("1")], true)
        .sync()
        .ready()
        .bind_full("", "s1", &[None, Some("1")], true)
        .sync()
        .ready()
        .prepare("s0", "SELECT 1")
        .prepare("s1", "SELECT 1")
        .run("s0", &["a"])
        .run("s1", &["b"])
}

/// Found by the generator (seed 0x7000d4): the Close is skipped, so the
/// next group's Bind and Describe find the statement (here its error
/// about the parameter count names it).
pub fn a_bind_after_a_group_whose_close_was_skipped() -> Conversation {
    Conversation::new("a_bind_after_a_group_whose_close_was_skipped", 1)
        .on(0)
        .prepare("s1", "SHOW TimeZone")
        .execute("", 0)
        .close_statement("s1")
        .sync()
        .bind_full("", "s1", &[Some("177001")], true)
        .sync()
        .describe_statement("s1")
        .sync()
        .ready()
        .ready()
        .ready()
        .run("s1", &[])
}

/// Found by the generator (seed 0x70005d).
pub fn an_unnamed_statement_of_an_earlier_transaction_after_a_skipped_bind() -> Conversation {
    Conversation::new(
        "an_unnamed_statement_of_an_earlier_transaction_after_a_skipped_bind",
        2,
    )
    .on(0)
    .prepare("", "SELECT $1::text || '!' AS shout")
    .on(1)
    .simple("COMMIT")
    .on(0)
    .execute("", 0)
    .bind("p0", "", &["abc"])
    .sync()
    .bind("p0", "", &["5"])
    .sync()
    .ready()
    .ready()
}

/// Found by the generator (seed 0x5eed002c).
pub fn a_second_parse_of_a_name_then_its_close() -> Conversation {
    Conversation::new("a_second_parse_of_a_name_then_its_close", 1)
        .on(0)
        .parse("s0", "SELECT 1 AS one", &[])
        .parse("s0", "SELECT 2 AS two", &[])
        .sync()
        .close_statement("s0")
        .sync()
        .ready()
        .ready()
}

/// Found by the generator (seeds 0x700004, 0x7000a8): Postgres drops the
/// unnamed statement before it parses a new one, so after a failed
/// unnamed Parse there is none, and a Bind or Describe of it gets 26000.
pub fn a_failed_unnamed_parse_leaves_no_unnamed_statement() -> Conversation {
    Conversation::new("a_failed_unnamed_parse_leaves_no_unnamed_statement", 1)
        .on(0)
        .parse("", "SELECT * FROM conf_no_such_table", &[])
        .sync()
        .ready()
        .bind("p0", "", &["1999-12-31 23:59:59.5-08"])
        .sync()
        .ready()
        .bind_full("", "", &[], true)
        .sync()
        .ready()
        .describe_statement("")
        .sync()
        .ready()
}

/// Found by the generator (seed 0x700049).
pub fn a_failed_unnamed_parse_after_a_good_one_leaves_none() -> Conversation {
    Conversation::new("a_failed_unnamed_parse_after_a_good_one_leaves_none", 1)
        .on(0)
        .parse("", "SELECT pg_notify($1, $2)", &[])
        .sync()
        .ready()
        .parse(
            "s0",
            "SELECT 1 AS one, 'a'::char(3) AS c, 2.5::float8 AS f, true AS b, NULL::uuid AS u",
            &[],
        )
        .parse("", "SELECT * FROM conf_no_such_table", &[])
        .sync()
        .bind("p0", "", &[])
        .sync()
        .ready()
        .ready()
}

/// Found by the generator (seed 0x7003c8): the unnamed Parse comes after
/// a Bind of its group and fails itself.
pub fn an_unnamed_parse_that_fails_after_a_bind_of_its_group_leaves_none() -> Conversation {
    Conversation::new(
        "an_unnamed_parse_that_fails_after_a_bind_of_its_group_leaves_none",
        1,
    )
    .on(0)
    .parse("", "SET application_name = 'gen_extended'", &[])
    .sync()
    .parse("s1", "SET application_name = 'gen_extended'", &[])
    .sync()
    .ready()
    .ready()
    .bind("", "s1", &[])
    .parse("", "SELECT * FROM conf_no_such_table", &[])
    .sync()
    .bind("", "", &[])
    .sync()
    .ready()
    .ready()
}

/// Found by the generator (seed 0x700249): in a transaction that failed
/// after it, the unnamed statement is still there for a Bind (whose error
/// about the parameter count comes before the one about the transaction).
pub fn an_unnamed_parse_of_a_failed_transaction_stays_on_its_server() -> Conversation {
    Conversation::new(
        "an_unnamed_parse_of_a_failed_transaction_stays_on_its_server",
        1,
    )
    .on(0)
    .query("BEGIN")
    .ready()
    .parse("", "SELECT repeat('y', $1::int) AS big", &[])
    .parse("", "SET application_name = 'gen_extended'", &[])
    .execute("", 0)
    .sync()
    .ready()
    .bind_full("", "", &[Some("2")], true)
    .sync()
    .ready()
    .query("ROLLBACK")
    .ready()
}

/// Found by the generator (seed 0x7007ba): both groups fail before their
/// unnamed Parse, so neither takes effect, whichever way the replies of
/// the two groups come.
pub fn unnamed_parses_skipped_in_two_pipelined_groups_leave_none() -> Conversation {
    Conversation::new(
        "unnamed_parses_skipped_in_two_pipelined_groups_leave_none",
        1,
    )
    .on(0)
    .execute("p0", 0)
    .parse("", "SELECT repeat('y', $1::int) AS big", &[])
    .sync()
    .execute("", 0)
    .parse("", "SET application_name = 'gen_extended'", &[])
    .sync()
    .sync()
    .ready()
    .ready()
    .ready()
    .describe_statement("")
    .bind("", "", &["gen_7007ba_0", "x62"])
    .sync()
    .ready()
}

/// Found by the generator (seed 0x70048e).
pub fn unnamed_parses_skipped_after_a_bind_and_an_execute_leave_none() -> Conversation {
    Conversation::new(
        "unnamed_parses_skipped_after_a_bind_and_an_execute_leave_none",
        1,
    )
    .on(0)
    .bind("", "s1", &["gen_70048e_0", "x2"])
    .parse("", "SELECT $1::int + 1 AS next", &[])
    .sync()
    .execute("", 0)
    .parse("", "SELECT $1::int + 1 AS next", &[23])
    .sync()
    .bind("", "", &["not a time"])
    .execute("", 0)
    .execute("", 1)
    .sync()
    .ready()
    .ready()
    .ready()
}

/// Found by the generator (seed 0x7000ea).
pub fn a_long_pipeline_of_unnamed_parses_binds_and_executes() -> Conversation {
    Conversation::new("a_long_pipeline_of_unnamed_parses_binds_and_executes", 1)
        .on(0)
        .execute("", 0)
        .parse("", "SHOW TimeZone", &[])
        .sync()
        .execute("", 0)
        .parse("", "SELECT 10 / $1::int AS q", &[])
        .parse(
            "",
            "SELECT $1::timestamptz AS ts, $1::timestamptz::date AS d",
            &[],
        )
        .bind("", "", &["1999-12-31 23:59:59.5-08"])
        .describe_portal("")
        .execute("", 0)
        .sync()
        .ready()
        .ready()
        .bind("", "", &["x\ty"])
        .sync()
        .parse("", "SELECT pg_notify($1, $2)", &[])
        .describe_statement("")
        .bind("", "", &["gen_7000ea_0", "x84"])
        .execute("", 0)
        .bind_full("", "s0", &[], true)
        .describe_portal("")
        .execute("", 2)
        .execute("", 0)
        .sync()
        .ready()
        .ready()
}

/// Found by the generator (seeds 0x700026, 0x70065f, 0x70012c): an
/// UNLISTEN takes effect at the commit that sends the NOTIFY, before the
/// backend reads its own notifications, so none is delivered.
pub fn an_unlisten_committed_with_a_notify_hears_nothing() -> Conversation {
    Conversation::new("an_unlisten_committed_with_a_notify_hears_nothing", 1)
        .on(0)
        .query("LISTEN conf_unl_{m}")
        .ready()
        .query("NOTIFY conf_unl_{m}, 'p275'; UNLISTEN *; SELECT 1 AS one")
        .ready()
        .query("LISTEN conf_unl_{m}; SELECT 304 AS n")
        .ready()
        .query("UNLISTEN conf_unl_{m}; SELECT pg_notify('conf_unl_{m}', 'q563'); SELECT 2 AS two")
        .ready()
        .query("LISTEN conf_unl_{m}")
        .ready()
        .query("SELECT pg_notify('conf_unl_{m}', 'q770'); SELECT 3 AS three; UNLISTEN conf_unl_{m}")
        .ready()
        .query("SELECT 'after'")
        .ready()
}

/// Found by the generator (seed 0x700924).
pub fn an_unlisten_in_a_block_commits_with_the_blocks_notify() -> Conversation {
    Conversation::new("an_unlisten_in_a_block_commits_with_the_blocks_notify", 1)
        .on(0)
        .query("LISTEN conf_blk_{m}")
        .ready()
        .query("BEGIN")
        .ready()
        .query("UNLISTEN conf_blk_{m}; SELECT g FROM generate_series(1, 2) AS g")
        .ready()
        .query("SELECT pg_notify('conf_blk_{m}', 'q289')")
        .ready()
        .query("COMMIT")
        .ready()
        .query("SELECT 'after'")
        .ready()
}

/// Found by the generator (seed 0x7003df): Postgres sends its own
/// notification before the ReadyForQuery of the NOTIFY, so the next
/// Query's UNLISTEN comes too late to drop it.
pub fn a_notify_to_oneself_arrives_before_the_next_query_unlistens() -> Conversation {
    Conversation::new(
        "a_notify_to_oneself_arrives_before_the_next_query_unlistens",
        1,
    )
    .on(0)
    .query("SET application_name = 'gen_750'; LISTEN conf_self_{m}")
    .ready()
    .query("NOTIFY conf_self_{m}, 'p571'; RESET DateStyle")
    .ready()
    .query("SHOW TimeZone; UNLISTEN conf_self_{m}")
    .ready()
    .parse("", "SELECT pg_notify('conf_self_{m}', 'x34')", &[])
    .bind("", "", &[])
    .execute("", 0)
    .sync()
    .ready()
}

/// Found by the generator (seeds 0x70070c, 0x700817).
pub fn a_notify_then_unlisten_all_while_another_client_waits() -> Conversation {
    Conversation::new("a_notify_then_unlisten_all_while_another_client_waits", 2)
        .on(0)
        .query("LISTEN conf_all_{m}; SET application_name = 'gen_345'")
        .ready()
        .query("SELECT pg_notify('conf_all_{m}', 'q247'); SELECT ARRAY[1,2,3] AS a; UNLISTEN *")
        .ready()
        .on(1)
        .query("SET LOCAL TimeZone = 'America/New_York'; SELECT 1 AS one; LISTEN conf_all_{m}")
        .ready()
        .query("SELECT pg_notify('conf_all_{m}', 'q717'); UNLISTEN *")
        .ready()
        .query("COMMIT")
        .ready()
}

/// Found by the generator (seed 0x7002f9): the Close is skipped, so the
/// Bind of the next group finds the statement (and fails on its value).
pub fn a_bind_in_the_next_group_after_a_skipped_close_and_an_unnamed_parse() -> Conversation {
    Conversation::new(
        "a_bind_in_the_next_group_after_a_skipped_close_and_an_unnamed_parse",
        1,
    )
    .on(0)
    .parse(
        "s0",
        "SELECT $1::timestamptz AS ts, $1::timestamptz::date AS d",
        &[],
    )
    .execute("", 0)
    .close_statement("s0")
    .sync()
    .parse(
        "",
        "SELECT g, g * 2 AS twice FROM generate_series(1, $1::int) AS g",
        &[],
    )
    .bind_full("p0", "s0", &[Some("120001")], true)
    .sync()
    .ready()
    .ready()
}

/// Found by the generator (seed 0x70027d): the Bind's error names the
/// statement it bound, not the one parsed later with the same text.
pub fn an_error_names_the_closed_one_of_two_names_for_one_text() -> Conversation {
    Conversation::new("an_error_names_the_closed_one_of_two_names_for_one_text", 1)
        .on(0)
        .parse("s1", "SELECT $1::int + 1 AS next", &[])
        .sync()
        .ready()
        .bind("", "s1", &[])
        .close_statement("s1")
        .parse("s0", "SELECT $1::int + 1 AS next", &[])
        .sync()
        .ready()
}

/// Found by the generator (seed 0x7004a6).
pub fn an_error_names_the_first_of_two_names_for_one_text_when_the_second_comes_later(
) -> Conversation {
    Conversation::new(
        "an_error_names_the_first_of_two_names_for_one_text_when_the_second_comes_later",
        1,
    )
    .on(0)
    .parse("s0", "SELECT pg_notify($1, $2)", &[])
    .bind_full(
        "",
        "s0",
        &[Some("gen_7004a6_1"), Some("x14"), Some("1")],
        true,
    )
    .close_statement("s0")
    .sync()
    .parse("s1", "SELECT pg_notify($1, $2)", &[])
    .sync()
    .ready()
    .ready()
}

/// Found by the generator (seed 0x710076): the LISTEN after the
/// UNLISTEN * stands at the commit, so the NOTIFY committed with both is
/// heard.
pub fn unlisten_all_then_listen_in_one_query_hears_its_notify() -> Conversation {
    Conversation::new("unlisten_all_then_listen_in_one_query_hears_its_notify", 1)
        .on(0)
        .query("UNLISTEN *; LISTEN conf_again_{m}; NOTIFY conf_again_{m}, 'p809'")
        .ready()
        .query("SELECT 'after'")
        .ready()
}

/// Found by the generator (seed 0x73007c): the second unnamed Parse
/// succeeds, the third is skipped after the Bind between them fails; in
/// the failed transaction a Bind of the unnamed statement then finds the
/// second on the server (its error is about the parameter count).
pub fn an_unnamed_parse_confirmed_before_a_later_one_is_skipped_stays_on_its_server() -> Conversation
{
    Conversation::new(
        "an_unnamed_parse_confirmed_before_a_later_one_is_skipped_stays_on_its_server",
        1,
    )
    .on(0)
    .query("BEGIN")
    .ready()
    .parse("", "SELECT $1::int + 1 AS next", &[])
    .bind("p0", "", &["0"])
    .parse("", "SELECT $1::text || '!' AS shout", &[])
    .bind("p0", "", &["hello"])
    .parse("", "SELECT * FROM conf_no_such_table", &[])
    .sync()
    .ready()
    .bind("p0", "", &[])
    .sync()
    .ready()
    .query("ROLLBACK")
    .ready()
}

/// A COPY FROM STDIN that fails before its CopyInResponse (here the
/// client's role may not write the table, made by `postgres` before each
/// run): a client may still send its data and CopyDone, or a
/// CopyFail, which Postgres ignores outside a COPY. Through pgharbor no
/// server is held by then, so they are dropped: a server taken for them
/// would wait for a ReadyForQuery that never comes, and another client
/// for that server (generator, seed 0x75016a).
pub fn copy_messages_after_a_failed_copy_are_ignored() -> Conversation {
    Conversation::new("copy_messages_after_a_failed_copy_are_ignored", 3)
        .before_each_run("DROP TABLE IF EXISTS conf_copy_denied_{m}; CREATE TABLE conf_copy_denied_{m} (a int, b text)")
        .before_each_run("DROP TABLE IF EXISTS conf_copy_other_{m}; CREATE TABLE conf_copy_other_{m} (a int, b text)")
        .on(0)
        .query("BEGIN")
        .ready()
        .on(1)
        .query("COPY conf_copy_denied_{m} (a, b) FROM STDIN")
        .replies(1)
        .copy_data(b"263\tcopied 263\n")
        .copy_data(b"7\t\\N\n")
        .copy_done()
        .ready()
        .on(2)
        .query("INSERT INTO conf_copy_other_{m} (a, b) VALUES (118, 'v118')")
        .ready()
}

/// Found by the generator (seed 0x5eed0270): in a failed transaction, a
/// Bind of a statement prepared before it gets the Bind's own errors
/// (the parameter count first, then 25P02), and a statement that ends
/// the transaction still runs. Through pgharbor the transaction's server
/// may lack the statement (client 1 held the other one while it was
/// prepared), and a Parse of it would be refused there with 25P02.
pub fn a_bind_in_a_failed_transaction_checks_its_parameters_first() -> Conversation {
    Conversation::new(
        "a_bind_in_a_failed_transaction_checks_its_parameters_first",
        2,
    )
    .tx_pool(2)
    .on(1)
    .query("BEGIN")
    .ready()
    .on(0)
    .parse(
        "s1",
        "SELECT a FROM generate_series(1, 3) AS a WHERE a > $1::int",
        &[],
    )
    .parse("s2", "ROLLBACK", &[])
    .sync()
    .ready()
    .on(1)
    .query("COMMIT")
    .ready()
    .on(0)
    .query("BEGIN")
    .ready()
    .query("SELECT 1/0")
    .ready()
    .bind("", "s1", &[])
    .execute("", 0)
    .sync()
    .ready()
    .bind("", "s1", &["1"])
    .execute("", 0)
    .sync()
    .ready()
    .bind("", "s2", &[])
    .execute("", 0)
    .sync()
    .ready()
    .query("SELECT 'after'")
    .ready()
}

/// Found by the generator (seed 0x6b16c26300116): as above, for a
/// statement the client described. Through pgharbor the transaction's
/// server holds the statement (client 1 prepared the same text there)
/// with a result shape not yet compared with what client 0 was told, and
/// the Describe that would compare it is refused in a failed
/// transaction; client 2 holds the other server meanwhile.
pub fn a_bind_in_a_failed_transaction_of_a_described_statement() -> Conversation {
    let text = "SELECT $1::text || '!' AS shout";
    Conversation::new("a_bind_in_a_failed_transaction_of_a_described_statement", 3)
        .tx_pool(2)
        .on(1)
        .query("BEGIN")
        .ready()
        .parse("s9", text, &[])
        .bind("", "s9", &["x"])
        .execute("", 0)
        .sync()
        .ready()
        .on(0)
        .parse("s1", text, &[])
        .describe_statement("s1")
        .sync()
        .ready()
        .on(2)
        .query("BEGIN")
        .ready()
        .on(1)
        .query("COMMIT")
        .ready()
        .on(0)
        .query("BEGIN")
        .ready()
        .query("SELECT 1/0")
        .ready()
        .bind("", "s1", &[])
        .execute("", 0)
        .sync()
        .ready()
        .bind("", "s1", &["x"])
        .execute("", 0)
        .sync()
        .ready()
        .query("ROLLBACK")
        .ready()
        .on(2)
        .query("COMMIT")
        .ready()
}

/// Found by the generator (seed 0x6b16c26300116): the Bind of the cases
/// above sent in the Sync group after the one that fails the transaction,
/// before its ReadyForQuery came.
pub fn a_bind_pipelined_after_a_group_that_fails_its_transaction() -> Conversation {
    let text = "SELECT $1::text || '!' AS shout";
    Conversation::new(
        "a_bind_pipelined_after_a_group_that_fails_its_transaction",
        3,
    )
    .tx_pool(2)
    .on(1)
    .query("BEGIN")
    .ready()
    .parse("s9", text, &[])
    .bind("", "s9", &["x"])
    .execute("", 0)
    .sync()
    .ready()
    .on(0)
    .parse("s1", text, &[])
    .describe_statement("s1")
    .parse("s2", "SELECT $1::int * 2 AS twice", &[])
    .sync()
    .ready()
    .on(2)
    .query("BEGIN")
    .ready()
    .on(1)
    .query("COMMIT")
    .ready()
    .on(0)
    .query("BEGIN")
    .ready()
    .parse("", "SELECT 1/0", &[])
    .bind("", "", &[])
    .execute("", 0)
    .sync()
    .bind("", "s1", &[])
    .execute("", 0)
    .sync()
    .bind("", "s2", &["1", "2"])
    .execute("", 0)
    .sync()
    .ready()
    .ready()
    .ready()
    .query("ROLLBACK")
    .ready()
    .on(2)
    .query("COMMIT")
    .ready()
}

/// A statement's first Bind on a server is skipped after an error of its
/// group, and the client binds it again in the next group, sent before
/// the first is answered: on Postgres the second Bind runs. Through
/// pgharbor the Parse it sent before the first Bind (the server lacked
/// the statement: client 2 held the one that prepared it) is skipped too,
/// so the second Bind must not count on it (found in the Postgres log of
/// a generator run, seed 0x6b16c26300096).
pub fn a_statement_whose_first_bind_was_skipped_binds_in_the_next_group() -> Conversation {
    Conversation::new(
        "a_statement_whose_first_bind_was_skipped_binds_in_the_next_group",
        3,
    )
    .tx_pool(2)
    .on(1)
    .query("BEGIN")
    .ready()
    .on(0)
    .parse("s2", "SELECT $1::int * 3 AS thrice", &[])
    .sync()
    .ready()
    .on(2)
    .query("BEGIN")
    .ready()
    .on(1)
    .query("COMMIT")
    .ready()
    .on(0)
    .parse("", "SELECT 1/0", &[])
    .bind("", "", &[])
    .execute("", 0)
    .bind("", "s2", &["1"])
    .execute("", 0)
    .sync()
    .bind("", "s2", &["2"])
    .execute("", 0)
    .sync()
    .describe_statement("s2")
    .sync()
    .ready()
    .ready()
    .ready()
    .on(2)
    .query("COMMIT")
    .ready()
}

cases! {
    reset_all_alone_after_settings_of_two_clients { session: [], transaction: [] }
    reset_all_among_other_statements_in_one_query { session: [], transaction: [] }
    asyncpg_reset_query_after_startup_settings { session: [], transaction: [] }
}

/// Client 0 logs in with startup settings, reported and not: on Postgres
/// what RESET ALL returns to.
fn with_startup_settings(c: Conversation) -> Conversation {
    c.startup(0, "application_name", "conf_start_{m}").startup(
        0,
        "options",
        "-c DateStyle=SQL,DMY -c work_mem=8MB",
    )
}

/// A lone RESET ALL, for a client with startup settings, after reported
/// settings were changed (an unreported one would pin the client in
/// transaction mode), while another client changes its own: the
/// ParameterStatus messages and values the client gets, and what it reads
/// after.
pub fn reset_all_alone_after_settings_of_two_clients() -> Conversation {
    let show = "SELECT current_setting('application_name'), current_setting('DateStyle'), \
                current_setting('TimeZone'), current_setting('IntervalStyle')";
    with_startup_settings(Conversation::new(
        "reset_all_alone_after_settings_of_two_clients",
        2,
    ))
    .on(0)
    .simple("SET application_name = 'conf_ra_{m}'")
    .simple("SET DateStyle = 'SQL, DMY'")
    .simple("SET IntervalStyle = 'iso_8601'")
    .on(1)
    .simple("SET TimeZone = 'Asia/Tokyo'")
    .simple("SET application_name = 'conf_other_{m}'")
    .on(0)
    .simple("RESET ALL")
    .simple(show)
    .simple("RESET ALL;")
    .simple(show)
    .on(1)
    .simple("RESET ALL")
    .simple(show)
}

/// RESET ALL with other statements in one simple Query (asyncpg's reset
/// query has it so), for a client with startup settings: before and after
/// other SETs, in a Query that fails after it (with and without an error
/// position), and inside a transaction block.
pub fn reset_all_among_other_statements_in_one_query() -> Conversation {
    let show = "SELECT current_setting('application_name'), current_setting('DateStyle'), \
                current_setting('IntervalStyle')";
    with_startup_settings(Conversation::new(
        "reset_all_among_other_statements_in_one_query",
        2,
    ))
    .on(0)
    .simple("SET application_name = 'conf_rb_{m}'")
    .simple("SET DateStyle = 'SQL, DMY'")
    .on(1)
    .simple("SET application_name = 'conf_other_{m}'")
    .on(0)
    .simple("SELECT 1; RESET ALL; SELECT current_setting('application_name')")
    .simple(show)
    .simple("SET DateStyle = 'German'; RESET ALL; SET application_name = 'conf_after_{m}'")
    .simple(show)
    .simple("SET IntervalStyle = 'sql_standard'; RESET ALL; SELECT 1/0")
    .simple(show)
    .simple("BEGIN; SET application_name = 'conf_in_tx_{m}'; RESET ALL; COMMIT")
    .simple(show)
    .simple("SET application_name = 'conf_before_error_{m}'; RESET ALL; SELECT conf_no_such_column")
    .simple(show)
    .on(1)
    .simple("SELECT 1; RESET ALL")
    .simple(show)
}

/// asyncpg's reset query on release (LISTEN answered by pgharbor, RESET
/// ALL with the startup settings set again, in one Query) for a client
/// with startup settings.
pub fn asyncpg_reset_query_after_startup_settings() -> Conversation {
    Conversation::new("asyncpg_reset_query_after_startup_settings", 1)
        .startup(0, "application_name", "conf_start_{m}")
        .startup(0, "options", "-c DateStyle=SQL,DMY")
        .simple("LISTEN conf_reset_start_{m}")
        .simple("SET application_name = 'conf_changed_{m}'")
        .simple("SET DateStyle = 'German'")
        .simple("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;")
        .simple("SELECT current_setting('application_name'), current_setting('DateStyle')")
        .simple("NOTIFY conf_reset_start_{m}, 'after unlisten'")
        .simple("SELECT 'after'")
}
