//! The unnamed statement as the expectation queue's replies tell it: a
//! Parse of it confirmed, failed or skipped, and the snapshots later
//! Parses took of it corrected to match.

use super::Expectations;
use crate::client::unnamed::UnnamedStatement;

impl Expectations {
    /// The reply to `first_unnamed_parse` came: `parsed`, a ParseComplete,
    /// or its error (the replies counted after it are then skipped as
    /// usual).
    pub(super) fn settle_first_unnamed_parse(
        &mut self,
        parsed: bool,
        unnamed: &mut UnnamedStatement,
    ) {
        let Some(generation) = self.first_unnamed_parse.take() else {
            return;
        };
        if !parsed {
            self.unnamed_outcome(unnamed, generation, true, false, None);
        } else if !unnamed.confirmed(generation) {
            self.patch_unnamed(generation, |s| s.here = true);
        }
    }

    /// The unnamed Parse `generation` failed (`failed`) or was skipped,
    /// made while the statement was `before`. When the statement changed
    /// since, the snapshot a later unnamed Parse took of it right after
    /// this one is corrected instead: that is what the later one's skip
    /// would bring back.
    pub(super) fn unnamed_outcome(
        &mut self,
        unnamed: &mut UnnamedStatement,
        generation: u32,
        failed: bool,
        injected: bool,
        before: Option<Box<UnnamedStatement>>,
    ) {
        if failed {
            if !unnamed.failed(generation, injected) && !injected {
                self.patch_unnamed(generation, |s| {
                    s.exists = false;
                    s.here = false;
                });
            }
            return;
        }
        let Some(before) = before else {
            return;
        };
        if let Some(before) = unnamed.skipped(generation, *before) {
            self.patch_unnamed(generation, |s| *s = before.clone());
        }
    }

    /// Applies `fix` to the queued snapshots taken right after the event
    /// `generation`.
    pub(super) fn patch_unnamed(&mut self, generation: u32, fix: impl Fn(&mut UnnamedStatement)) {
        let snapshots = self.queue.iter_mut().filter_map(|e| {
            let s = e.undo.as_mut()?.unnamed.as_mut()?;
            (s.generation() == generation).then_some(s)
        });
        for s in snapshots {
            fix(s);
        }
    }
}
