//! LISTEN / UNLISTEN issued inside a transaction: they take effect at COMMIT
//! and are discarded on ROLLBACK, as in Postgres. The relay answers each one
//! at once (CommandComplete) and keeps it here until the transaction ends.

use super::{ListenCommand, ListenError, Subscriber};

#[derive(Debug, Default, Clone)]
pub struct PendingListens {
    cmds: Vec<ListenCommand>,
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

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
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

    /// The transaction rolled back (or failed): nothing happens.
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
}
