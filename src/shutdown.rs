//! The instance's drain signal.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};

/// Set once, when the instance starts draining. Waiting goes through a
/// cancellation token; asking goes through a flag beside it, because the
/// relay asks twice per transaction and the token's `is_cancelled` takes
/// its lock. The token is private, so the flag is always set first.
#[derive(Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    requested: AtomicBool,
}

impl Shutdown {
    pub fn cancel(&self) {
        self.requested.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Resolves once [`Shutdown::cancel`] was called.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// [`Shutdown::cancelled`] that owns its handle on the token.
    pub fn cancelled_owned(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::Shutdown;

    #[tokio::test]
    async fn cancel_sets_the_flag_and_wakes_waiters() {
        let s = std::sync::Arc::new(Shutdown::default());
        assert!(!s.is_cancelled());
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.cancelled_owned().await })
        };
        s.cancel();
        assert!(s.is_cancelled());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes")
            .unwrap();
    }
}
