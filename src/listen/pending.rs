//! LISTEN / UNLISTEN issued inside a transaction: they take effect at COMMIT
//! and are discarded on ROLLBACK, as in Postgres. The relay answers each one
//! at once (CommandComplete) and keeps it here until the transaction ends.

use super::{ListenCommand, ListenError, Subscriber};

#[derive(Debug, Default, Clone)]
pub struct PendingListens {
    cmds: Vec<ListenCommand>,
    /// Channels the client was subscribed to ahead of the COMMIT that may
    /// make their LISTEN take effect, so that a NOTIFY committed with it
    /// reaches the client as on Postgres. Their notifications are held
    /// until the transaction ends, and dropped with the subscription if
    /// the LISTEN does not take effect.
    early: Vec<String>,
}

impl PendingListens {
    pub fn new() -> PendingListens {
        PendingListens::default()
    }

    /// Records a command. A later `UNLISTEN *` makes earlier ones moot.
    pub fn push(&mut self, cmd: ListenCommand) {
        if cmd == ListenCommand::UnlistenAll {
            self.cmds.clear();
        }
        self.cmds.push(cmd);
    }

    /// Nothing waits for the end of the transaction.
    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty() && self.early.is_empty()
    }

    /// `channel` was subscribed to ahead of the COMMIT.
    pub fn heard_early(&mut self, channel: String) {
        self.early.push(channel);
    }

    /// Notifications wait: a channel was subscribed to ahead of its COMMIT.
    pub fn holds_delivery(&self) -> bool {
        !self.early.is_empty()
    }

    /// The channels subscribed to ahead of the COMMIT.
    pub fn take_early(&mut self) -> Vec<String> {
        std::mem::take(&mut self.early)
    }

    /// Whether committing leaves the client listening on `channel` (when
    /// it did not before).
    pub fn leaves_listening(&self, channel: &str) -> bool {
        self.cmds.iter().rev().find_map(|c| match c {
            ListenCommand::Listen(ch) if ch == channel => Some(true),
            ListenCommand::Unlisten(ch) if ch == channel => Some(false),
            ListenCommand::UnlistenAll => Some(false),
            _ => None,
        }) == Some(true)
    }

    /// The commands held, in order.
    pub fn commands(&self) -> &[ListenCommand] {
        &self.cmds
    }

    /// The transaction committed: applies everything, in order. Every
    /// command is applied even if a LISTEN fails; the first error is returned
    /// (the relay may report it as a NOTICE/ERROR; the COMMIT itself stands).
    pub async fn commit(&mut self, sub: &mut Subscriber) -> Result<(), ListenError> {
        let mut first_err = None;
        for cmd in std::mem::take(&mut self.cmds) {
            match cmd {
                ListenCommand::Listen(ch) => {
                    if let Err(e) = sub.listen(&ch).await {
                        first_err.get_or_insert(e);
                    }
                }
                ListenCommand::Unlisten(ch) => sub.unlisten(&ch),
                ListenCommand::UnlistenAll => sub.unlisten_all(),
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The transaction rolled back (or failed): nothing happens. The
    /// channels heard early are the caller's to undo (`take_early`).
    pub fn rollback(&mut self) {
        self.cmds.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_discards_and_unlisten_all_supersedes() {
        let mut p = PendingListens::new();
        assert!(p.is_empty());
        p.push(ListenCommand::Listen("a".into()));
        p.push(ListenCommand::Unlisten("b".into()));
        assert_eq!(p.commands().len(), 2);
        p.rollback();
        assert!(p.is_empty());
        p.push(ListenCommand::Listen("a".into()));
        p.push(ListenCommand::UnlistenAll);
        p.push(ListenCommand::Listen("c".into()));
        assert_eq!(
            p.commands(),
            &[
                ListenCommand::UnlistenAll,
                ListenCommand::Listen("c".into())
            ]
        );
    }

    #[test]
    fn the_last_command_on_a_channel_decides_if_it_stays_heard() {
        let mut p = PendingListens::new();
        p.heard_early("a".into());
        assert!(!p.is_empty() && p.holds_delivery());
        p.push(ListenCommand::Listen("a".into()));
        p.push(ListenCommand::Listen("b".into()));
        p.push(ListenCommand::Unlisten("b".into()));
        assert!(p.leaves_listening("a"));
        assert!(!p.leaves_listening("b"));
        assert!(!p.leaves_listening("c"));
        p.push(ListenCommand::UnlistenAll);
        assert!(!p.leaves_listening("a"));
        assert_eq!(p.take_early(), vec!["a".to_string()]);
        assert!(!p.holds_delivery());
    }
}
