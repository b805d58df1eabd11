//! Unit tests of the expectation queue (`expect.rs`).

use super::*;

#[test]
fn injected_parse_is_swallowed_and_synthesized_replies_wait_their_turn() {
    let mut q = Expectations::default();
    let mut undo = Vec::new();
    q.push(Reply::Execute, Action::Forward);
    q.push(Reply::ParseComplete, Action::Synthesize);
    q.push(Reply::ParseComplete, Action::Swallow);
    q.push(Reply::BindComplete, Action::Forward);
    q.push(Reply::Ready, Action::Forward);
    assert!(q.due_synthesized().is_none());
    assert!(matches!(
        q.on_server_message(
            b'D',
            &mut undo,
            &mut Vec::new(),
            &mut UnnamedStatement::default()
        ),
        Outcome::Forward
    ));
    assert!(matches!(
        q.on_server_message(
            b'C',
            &mut undo,
            &mut Vec::new(),
            &mut UnnamedStatement::default()
        ),
        Outcome::Forward
    ));
    assert_eq!(
        q.due_synthesized().map(|s| s.reply),
        Some(Reply::ParseComplete)
    );
    assert!(q.due_synthesized().is_none());
    assert!(matches!(
        q.on_server_message(
            b'1',
            &mut undo,
            &mut Vec::new(),
            &mut UnnamedStatement::default()
        ),
        Outcome::Swallow
    ));
    assert!(matches!(
        q.on_server_message(
            b'2',
            &mut undo,
            &mut Vec::new(),
            &mut UnnamedStatement::default()
        ),
        Outcome::Forward
    ));
    assert!(matches!(
        q.on_server_message(
            b'Z',
            &mut undo,
            &mut Vec::new(),
            &mut UnnamedStatement::default()
        ),
        Outcome::Forward
    ));
    assert!(q.is_empty());
}

#[test]
fn an_error_skips_to_the_sync_and_undoes_parses() {
    let mut q = Expectations::default();
    let mut undo = Vec::new();
    let u = |n: &str| Undo {
        server_name: Some(n.into()),
        client_name: Some(n.into()),
        closed_first: false,
        restore: None,
        unnamed: None,
    };
    q.push_undo(Reply::ParseComplete, Action::Forward, u("a"));
    q.push_undo(Reply::ParseComplete, Action::Synthesize, u("b"));
    q.push(Reply::BindComplete, Action::Forward);
    q.push(Reply::Ready, Action::Forward);
    q.push(Reply::ParseComplete, Action::Forward);
    assert!(matches!(
        q.on_server_message(
            b'E',
            &mut undo,
            &mut Vec::new(),
            &mut UnnamedStatement::default()
        ),
        Outcome::Forward
    ));
    assert_eq!(undo.len(), 2);
    assert!(matches!(
        q.on_server_message(
            b'Z',
            &mut undo,
            &mut Vec::new(),
            &mut UnnamedStatement::default()
        ),
        Outcome::Forward
    ));
    assert!(matches!(
        q.on_server_message(
            b'1',
            &mut undo,
            &mut Vec::new(),
            &mut UnnamedStatement::default()
        ),
        Outcome::Forward
    ));
    assert!(q.is_empty());
}

#[test]
fn a_plain_group_allocates_nothing_and_its_replies_need_no_look() {
    let mut q = Expectations::default();
    let mut undo = Vec::new();
    for r in [
        Reply::ParseComplete,
        Reply::BindComplete,
        Reply::Describe,
        Reply::Execute,
    ] {
        q.push(r, Action::Forward);
    }
    assert!(!q.is_empty());
    q.push(Reply::Ready, Action::Forward);
    assert!(!q.needs_each_reply());
    assert_eq!(q.queue.capacity(), 0, "an idle client keeps no queue");
    // An error inside the group does not end it: its Sync does.
    for tag in [b'1', b'2', b'T', b'C', b'E'] {
        assert!(matches!(
            q.on_server_message(
                tag,
                &mut undo,
                &mut Vec::new(),
                &mut UnnamedStatement::default()
            ),
            Outcome::Forward
        ));
        assert!(!q.is_empty());
    }
    q.on_server_message(
        b'Z',
        &mut undo,
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    );
    assert!(q.is_empty());
    assert!(!q.needs_each_reply());
}

#[test]
fn a_synthesized_reply_waits_for_the_plain_messages_sent_before_it() {
    let mut q = Expectations::default();
    let mut undo = Vec::new();
    q.push(Reply::BindComplete, Action::Forward);
    q.push(Reply::Execute, Action::Forward);
    q.push(Reply::CloseComplete, Action::Synthesize);
    q.push(Reply::BindComplete, Action::Forward);
    assert!(q.needs_each_reply());
    q.on_server_message(
        b'2',
        &mut undo,
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    );
    assert!(q.due_synthesized().is_none());
    q.on_server_message(
        b'D',
        &mut undo,
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    );
    assert!(q.due_synthesized().is_none());
    q.on_server_message(
        b'C',
        &mut undo,
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    );
    assert_eq!(
        q.due_synthesized().map(|s| s.reply),
        Some(Reply::CloseComplete)
    );
    // The Bind sent after it is counted until its reply comes.
    assert!(!q.is_empty());
    assert!(q.needs_each_reply());
    q.on_server_message(
        b'2',
        &mut undo,
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    );
    assert!(q.is_empty());
}

#[test]
fn an_error_before_any_sync_drops_the_count_of_the_skipped_messages() {
    let mut q = Expectations::default();
    let mut undo = Vec::new();
    q.push(Reply::BindComplete, Action::Forward);
    q.push(Reply::Execute, Action::Forward);
    q.on_server_message(
        b'E',
        &mut undo,
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    );
    assert!(q.is_empty());
    assert!(!q.needs_each_reply());
    // The group's Sync is then the only reply to wait for.
    q.push(Reply::Ready, Action::Forward);
    q.on_server_message(
        b'Z',
        &mut undo,
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    );
    assert!(q.is_empty());
}

/// The server's next message, when no Parse's undo matters.
fn answer(q: &mut Expectations, tag: u8) -> Outcome {
    q.on_server_message(
        tag,
        &mut Vec::new(),
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    )
}

/// tokio-postgres's `copy_in`: Bind/Execute/Sync, then, after the
/// CopyInResponse, CopyData, CopyDone, Sync, and Close/Sync when the
/// statement is dropped. Postgres ignores the first Sync.
#[test]
fn a_sync_read_as_copy_data_is_owed_nothing() {
    let mut q = Expectations::default();
    q.push(Reply::BindComplete, Action::Forward);
    q.push(Reply::Execute, Action::Forward);
    q.push(Reply::Ready, Action::Forward);
    answer(&mut q, b'2');
    q.drop_ignored_syncs(1);
    answer(&mut q, b'G');
    assert!(!q.is_empty(), "the COPY's CommandComplete is still owed");
    q.push(Reply::Ready, Action::Forward);
    q.push(Reply::CloseComplete, Action::Synthesize);
    q.push(Reply::Ready, Action::Forward);
    answer(&mut q, b'C');
    assert!(
        q.due_synthesized().is_none(),
        "the ReadyForQuery comes first"
    );
    answer(&mut q, b'Z');
    assert_eq!(
        q.due_synthesized().map(|s| s.reply),
        Some(Reply::CloseComplete)
    );
    answer(&mut q, b'Z');
    assert!(q.is_empty());
}

/// The same sequence in one write, answered after it was all counted.
#[test]
fn a_pipelined_copy_keeps_its_reply_before_what_follows() {
    let mut q = Expectations::default();
    q.push(Reply::Execute, Action::Forward);
    q.push(Reply::Ready, Action::Forward);
    q.push(Reply::CloseComplete, Action::Synthesize);
    q.push(Reply::Ready, Action::Forward);
    q.drop_ignored_syncs(1);
    assert!(q.due_synthesized().is_none());
    assert!(q.needs_each_reply());
    answer(&mut q, b'C');
    assert_eq!(
        q.due_synthesized().map(|s| s.reply),
        Some(Reply::CloseComplete)
    );
    answer(&mut q, b'Z');
    assert!(q.is_empty());
}

/// A COPY that fails on a bad row: its error, then the ReadyForQuery of
/// the Sync sent after CopyDone (or CopyFail).
#[test]
fn an_error_during_copy_skips_to_the_sync_after_it() {
    let mut q = Expectations::default();
    q.push(Reply::Execute, Action::Forward);
    q.push(Reply::Ready, Action::Forward);
    q.drop_ignored_syncs(1);
    answer(&mut q, b'E');
    assert!(q.is_empty());
    q.push(Reply::Ready, Action::Forward);
    answer(&mut q, b'Z');
    assert!(q.is_empty());
}

/// A simple-Query COPY keeps its own ReadyForQuery; a Sync sent during
/// it (read as data) does not add one.
#[test]
fn a_query_copy_keeps_its_ready_for_query() {
    let mut q = Expectations::default();
    q.push(Reply::Ready, Action::Forward);
    q.push(Reply::Ready, Action::Forward);
    q.drop_ignored_syncs(1);
    assert!(!q.needs_each_reply());
    answer(&mut q, b'C');
    answer(&mut q, b'Z');
    assert!(q.is_empty());
}

#[test]
fn an_error_skips_only_its_own_group() {
    let mut q = Expectations::default();
    let mut undo = Vec::new();
    let u = Undo {
        server_name: Some("a".into()),
        client_name: Some("a".into()),
        closed_first: false,
        restore: None,
        unnamed: None,
    };
    q.push_undo(Reply::ParseComplete, Action::Forward, u);
    q.push(Reply::Ready, Action::Forward);
    // The next group: plain messages, then a reply given here.
    q.push(Reply::BindComplete, Action::Forward);
    q.push(Reply::Execute, Action::Forward);
    q.push(Reply::CloseComplete, Action::Synthesize);
    q.push(Reply::Ready, Action::Forward);
    q.on_server_message(
        b'E',
        &mut undo,
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    );
    assert_eq!(undo.len(), 1);
    q.on_server_message(
        b'Z',
        &mut undo,
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    );
    assert!(q.needs_each_reply(), "the second group's replies count");
    q.on_server_message(
        b'2',
        &mut undo,
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    );
    assert!(q.due_synthesized().is_none());
    q.on_server_message(
        b'C',
        &mut undo,
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    );
    assert_eq!(
        q.due_synthesized().map(|s| s.reply),
        Some(Reply::CloseComplete)
    );
    q.on_server_message(
        b'Z',
        &mut undo,
        &mut Vec::new(),
        &mut UnnamedStatement::default(),
    );
    assert!(q.is_empty());
}

/// One group of a driver that parses the unnamed statement before each
/// statement (pgbench -M extended), sent with no reply outstanding.
fn first_unnamed_parse_group(u: &mut UnnamedStatement) -> Expectations {
    let mut q = Expectations::default();
    let generation = u.parsed(b"P\0\0\0\x08\0x\0\0\0", None);
    q.push_unnamed_parse(Action::Forward, None, generation);
    q.push(Reply::BindComplete, Action::Forward);
    q.push(Reply::Execute, Action::Forward);
    q.push(Reply::Ready, Action::Forward);
    q
}

#[test]
fn an_unnamed_parse_sent_with_nothing_outstanding_that_fails_leaves_no_unnamed_statement() {
    let mut u = UnnamedStatement::default();
    let mut q = first_unnamed_parse_group(&mut u);
    assert!(q.needs_each_reply(), "its ParseComplete is looked at");
    let mut undo = Vec::new();
    q.on_server_message(b'E', &mut undo, &mut Vec::new(), &mut u);
    assert!(!u.exists && !u.here);
    q.on_server_message(b'Z', &mut undo, &mut Vec::new(), &mut u);
    assert!(q.is_empty());
}

#[test]
fn an_error_after_the_parse_complete_of_a_first_unnamed_parse_keeps_the_statement() {
    let mut u = UnnamedStatement::default();
    let mut q = first_unnamed_parse_group(&mut u);
    let mut undo = Vec::new();
    q.on_server_message(b'1', &mut undo, &mut Vec::new(), &mut u);
    assert!(
        !q.needs_each_reply(),
        "only the Sync's ReadyForQuery is left"
    );
    q.on_server_message(b'E', &mut undo, &mut Vec::new(), &mut u);
    assert!(u.exists && u.here);
    q.on_server_message(b'Z', &mut undo, &mut Vec::new(), &mut u);
    assert!(q.is_empty());
}
