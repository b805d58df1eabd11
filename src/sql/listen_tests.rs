use super::*;

fn listen(s: &str) -> Option<ListenCommand> {
    Some(ListenCommand::Listen(s.to_string()))
}

fn unlisten(s: &str) -> Option<ListenCommand> {
    Some(ListenCommand::Unlisten(s.to_string()))
}

#[test]
fn keywords_are_case_insensitive_and_identifiers_fold() {
    assert_eq!(parse("LISTEN Foo"), Ok(listen("foo")));
    assert_eq!(parse("listen foo;"), Ok(listen("foo")));
    assert_eq!(
        parse("  LiStEn\n\tMyChannel ;  \n"),
        Ok(listen("mychannel"))
    );
    assert_eq!(parse("UNLISTEN Foo_Bar$1;;"), Ok(unlisten("foo_bar$1")));
    assert_eq!(parse("unlisten *"), Ok(Some(ListenCommand::UnlistenAll)));
    assert_eq!(parse("UNLISTEN * ;"), Ok(Some(ListenCommand::UnlistenAll)));
    assert_eq!(ListenCommand::UnlistenAll.tag(), "UNLISTEN");
    assert_eq!(ListenCommand::Listen("x".into()).tag(), "LISTEN");
    // Non-reserved keywords are fine channel names.
    assert_eq!(parse("LISTEN listen"), Ok(listen("listen")));
    assert_eq!(parse("LISTEN Name"), Ok(listen("name")));
}

#[test]
fn comments_are_skipped() {
    assert_eq!(parse("-- hi\nLISTEN a -- trailing"), Ok(listen("a")));
    assert_eq!(
        parse("/* a /* nested */ c */ LISTEN /*x*/ b /* y */;"),
        Ok(listen("b"))
    );
}

#[test]
fn quoted_identifiers_keep_case_and_undouble_quotes() {
    assert_eq!(parse(r#"LISTEN "Foo""Bar""#), Ok(listen(r#"Foo"Bar"#)));
    assert_eq!(
        parse(r#"LISTEN "with space; and -- stuff""#),
        Ok(listen("with space; and -- stuff"))
    );
    assert_eq!(parse(r#"UNLISTEN "*""#), Ok(unlisten("*")));
    assert_eq!(parse(r#"LISTEN "select""#), Ok(listen("select")));
    assert!(matches!(
        parse(r#"LISTEN """#),
        Err(ListenParseError::Syntax(_))
    ));
}

#[test]
fn unicode_identifiers() {
    assert_eq!(parse("LISTEN Ünïcödé"), Ok(listen("Ünïcödé")));
    assert_eq!(parse("LISTEN ÄBC"), Ok(listen("Äbc")), "only ASCII folds");
    assert_eq!(parse("LISTEN \"канал 📣\""), Ok(listen("канал 📣")));
    assert_eq!(parse(r#"LISTEN U&"d\0061t\+000061""#), Ok(listen("data")));
    assert_eq!(parse(r#"LISTEN u&"\D83D\DE00\\""#), Ok(listen("😀\\")));
    assert_eq!(
        parse(r#"LISTEN U&"d!0061t!+000061" UESCAPE '!'"#),
        Ok(listen("data"))
    );
    assert!(parse(r#"LISTEN U&"\D83D""#).is_err());
    assert!(parse(r#"LISTEN U&"\zzzz""#).is_err());
    assert!(parse(r#"LISTEN U&"x" UESCAPE 'a'"#).is_err());
}

#[test]
fn names_truncate_to_63_bytes_on_a_character_boundary() {
    let long = "a".repeat(100);
    assert_eq!(
        parse(&format!("LISTEN {long}")),
        Ok(listen(&"a".repeat(63)))
    );
    // 62 ASCII bytes then a 2-byte char: 64 bytes → the char goes.
    let s = format!("{}é", "b".repeat(62));
    assert_eq!(
        parse(&format!("LISTEN \"{s}\"")),
        Ok(listen(&"b".repeat(62)))
    );
    // 21 three-byte chars = 63 bytes: kept whole.
    let s = "€".repeat(22);
    assert_eq!(
        parse(&format!("LISTEN \"{s}\"")),
        Ok(listen(&"€".repeat(21)))
    );
    assert_eq!(truncate_channel("short"), "short");
}

#[test]
fn other_queries_are_not_ours() {
    for q in [
        "SELECT 1",
        "NOTIFY foo, 'x'",
        "select pg_notify('a', 'LISTEN b')",
        "SELECT 'LISTEN x; LISTEN y'",
        "SELECT $$; LISTEN x$$",
        "SELECT $tag$ ; LISTEN x $tag$",
        "SELECT E'\\'; LISTEN x'",
        "SELECT 1 -- ; LISTEN x",
        "SELECT 1 /* ; LISTEN x */",
        "listener_table_insert",
        "",
        " ; ",
        "SELECT 'unterminated",
        "DO $$ BEGIN EXECUTE 'LISTEN x'; END $$",
    ] {
        assert_eq!(parse(q), Ok(None), "{q}");
    }
}

#[test]
fn mixed_statements_are_refused() {
    for q in [
        "LISTEN a; SELECT 1",
        "SELECT 1; LISTEN a",
        "BEGIN; LISTEN a; COMMIT",
        "LISTEN a; LISTEN b",
        "SELECT 1; LISTEN \"unterminated",
    ] {
        assert_eq!(parse(q), Err(ListenParseError::Mixed), "{q}");
    }
    let e = ListenParseError::Mixed.to_pg_error();
    assert_eq!(e.code, "0A000");
    assert!(e.message.contains("LISTEN"));
}

#[test]
fn many_listens_parse_together() {
    assert_eq!(
        parse_many("LISTEN a; UNLISTEN \"B\"; unlisten *;"),
        Ok(Some(vec![
            ListenCommand::Listen("a".into()),
            ListenCommand::Unlisten("B".into()),
            ListenCommand::UnlistenAll,
        ]))
    );
    assert_eq!(parse_many("select 1"), Ok(None));
    assert_eq!(
        parse_many("LISTEN a; select 1"),
        Err(ListenParseError::Mixed)
    );
}

#[test]
fn malformed_listens_are_syntax_errors() {
    for q in [
        "LISTEN",
        "LISTEN ;",
        "LISTEN a b",
        "LISTEN 'a'",
        "LISTEN select",
        "LISTEN *",
        "UNLISTEN a, b",
        "LISTEN \"unterminated",
        "LISTEN 1abc",
    ] {
        let r = parse(q);
        assert!(matches!(r, Err(ListenParseError::Syntax(_))), "{q}: {r:?}");
        assert_eq!(r.unwrap_err().to_pg_error().code, "42601");
    }
}

fn mixed(sql: &str) -> MixedQuery {
    match plan(sql) {
        Ok(QueryListens::Mixed(m)) => m,
        other => panic!("{sql}: {other:?}"),
    }
}

#[test]
fn a_mixed_query_runs_select_in_place_of_each_listen() {
    let m = mixed("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;");
    assert_eq!(
        m.text,
        "SELECT pg_advisory_unlock_all(); CLOSE ALL; SELECT    ; RESET ALL;"
    );
    assert_eq!(
        m.statements,
        vec![None, None, Some(ListenCommand::UnlistenAll)]
    );
    // As many characters as the statement had: error positions stay.
    let m = mixed("LISTEN /* ü */ \"ä\"; SELECT x");
    assert_eq!(m.text, format!("SELECT{}; SELECT x", " ".repeat(12)));
    // Statements after the last LISTEN/UNLISTEN need no place of their own.
    let m = mixed("select 1; listen a; select 2; select 3");
    assert_eq!(m.statements, vec![None, listen("a")]);
    assert_eq!(m.commands().count(), 1);
}

#[test]
fn semicolons_inside_a_statement_do_not_split_it() {
    let rule = "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO u VALUES (1); DELETE FROM u); LISTEN a";
    assert_eq!(mixed(rule).statements, vec![None, listen("a")]);
    let body = "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; \
                SELECT CASE WHEN true THEN 1 END; END; LISTEN b";
    assert_eq!(mixed(body).statements, vec![None, listen("b")]);
    assert_eq!(
        mixed("SELECT ';', $$;$$; LISTEN c").statements,
        vec![None, listen("c")]
    );
}

#[test]
fn a_mixed_query_that_does_not_lex_is_left_to_the_server() {
    for q in ["SELECT 1; LISTEN \"unterminated", "LISTEN a; SELECT 'x"] {
        assert_eq!(plan(q), Ok(QueryListens::Unreadable), "{q}");
    }
    assert!(matches!(
        plan("LISTEN select; SELECT 1"),
        Err(ListenParseError::Syntax(_))
    ));
    assert_eq!(plan("SELECT 'listen a'; SELECT 1"), Ok(QueryListens::None));
    assert_eq!(
        plan("LISTEN a; UNLISTEN b"),
        Ok(QueryListens::Only(vec![
            ListenCommand::Listen("a".into()),
            ListenCommand::Unlisten("b".into())
        ]))
    );
}

#[test]
fn may_commit_follows_transaction_blocks() {
    assert!(may_commit("LISTEN a; NOTIFY a", false));
    assert!(!may_commit("BEGIN; LISTEN a; SELECT 1", false));
    assert!(may_commit("BEGIN; LISTEN a; COMMIT", false));
    assert!(may_commit("COMMIT", true));
    assert!(may_commit("end", true));
    assert!(!may_commit("SELECT 'commit'", true));
    assert!(!may_commit("ROLLBACK TO s; SELECT 1", true));
    assert!(may_commit("ROLLBACK; SELECT 1", true));
    assert!(may_commit("SELECT 'unterminated", true));
}
