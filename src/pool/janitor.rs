//! Background upkeep of one pool: closes idle servers past
//! `server_idle_timeout` or `server_lifetime`, drops dead ones, and keeps
//! `min_pool_size` servers open.

use std::sync::Arc;
use std::time::Duration;

use super::Pool;

const PERIOD: Duration = Duration::from_secs(1);

pub(super) fn spawn(pool: &Arc<Pool>) {
    let weak = Arc::downgrade(pool);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = Pool::live(&weak) else {
                return;
            };
            sweep(&pool);
            top_up(&pool).await;
        }
    });
}

/// Removes idle servers that are too old, idle too long, or dead.
fn sweep(pool: &Pool) {
    let settings = pool.settings.load_full();
    let min = settings.min_pool_size;
    let removed = {
        let mut idle = pool.idle_list();
        let before = idle.len();
        // Idle-timeout closes never take the pool below min_pool_size.
        let mut may_close_idle = (pool.in_use() + before).saturating_sub(min);
        // Oldest-used first, so idle timeouts close the coldest servers; the
        // list ends with the most recently used, which checkout pops first.
        idle.sort_by_key(|s| std::cmp::Reverse(s.last_used.elapsed()));
        let mut kept = Vec::with_capacity(idle.len());
        let now = std::time::Instant::now();
        for mut server in idle.drain(..) {
            // A RELOAD may have changed server_lifetime since it opened.
            server.retire_at = server.created.checked_add(settings.server_lifetime);
            let expired = super::past_lifetime(&server, now);
            let idle_too_long =
                server.last_used.elapsed() >= settings.server_idle_timeout && may_close_idle > 0;
            if expired || idle_too_long || !server.is_alive() {
                may_close_idle = may_close_idle.saturating_sub(1);
                continue;
            }
            kept.push(server);
        }
        *idle = kept;
        before - idle.len()
    };
    if removed > 0 {
        pool.stats.servers_idle.sub(removed as i64);
        tracing::debug!(pool = %pool.key, removed, "closed idle server connections");
    }
}

/// Opens servers until `min_pool_size` exist (using free permits only, so
/// clients are never kept waiting by warm-up).
async fn top_up(pool: &Arc<Pool>) {
    let min = pool.settings().min_pool_size;
    while pool.in_use() + pool.idle_count() < min {
        let Some(permit) = pool.try_permit() else {
            return;
        };
        // Warm-up never waits or closes others' servers for room.
        let hold = match pool.limits.get() {
            None => None,
            Some(limits) => match limits.try_hold() {
                Some(hold) => Some(hold),
                None => return,
            },
        };
        let Ok(server) = pool.open_server(hold).await else {
            return;
        };
        let generation = pool.generation.load(std::sync::atomic::Ordering::Acquire);
        // Idle before the permit goes back, for a client it may wake.
        pool.put_idle(server, generation, std::time::Instant::now());
        drop(permit);
    }
}
