//! Lease balancing as a pure decision: from the lease table as one worker scanned it,
//! what that worker has observed of the table over time, and what it holds, which
//! leases it takes and which one it steals this round. [`super::LeaseCoordinator`] does
//! the I/O around it (Scan, conditional UpdateItems); everything decided here is tested
//! without DynamoDB, by unit tests and by property tests that simulate rounds of
//! several workers (`plan/tests.rs`).
//!
//! The rules follow the Kinesis Client Library's lease taker:
//!
//! ```text
//!  active   = not finished, and every parent finished (or no longer in the table)
//!  expired  = owned by another tenure, counter unchanged for a lease duration since
//!             this worker first observed it (its own monotonic clock; never wall clocks)
//!  live     = me + every owner of an active, unexpired lease
//!  target   = ⌈active / live⌉ (at most max_leases)
//!  take     = free leases (rotated per worker), then expired ones, up to target
//!  steal    = still below target: one lease of the most loaded other worker, if it holds
//!             at least two more than I will (so an idle worker takes from one holding
//!             two, and a steal always narrows the spread: no ping-pong)
//!  lost     = held here, but the table names another owner or tenure
//! ```
//!
//! A holder gives a lease up once no renewal it sent succeeded for a lease duration
//! ([`stood_still`] on the send time), and another worker takes it as expired only
//! after it saw the counter stand still that long after the renewal landed, so the
//! holder always stops first. Tokens ([`token`]) name one tenure: a checkpoint write is
//! conditional on it, so a worker that lost a lease never moves its checkpoint.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::Lease;
use crate::record::ShardId;

/// A worker's id in the lease table.
pub type WorkerId = str;

/// The token of the tenure that starts when `worker` takes a lease and sets its
/// counter to `counter`.
pub fn token(worker: &WorkerId, counter: u64) -> String {
    format!("{worker}:{counter}")
}

/// Whether something last seen to change at `since` has stood still for `duration` at
/// `now`. Used by the holder (since = send time of its last successful renewal: the
/// lease is lost) and by an observer (since = when it first saw the current counter:
/// the lease is expired); the holder's `since` is never later than the observer's.
pub fn stood_still(since: Instant, now: Instant, duration: Duration) -> bool {
    now.saturating_duration_since(since) >= duration
}

/// The balancing settings of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    /// How long a counter stands still before its lease counts as expired.
    pub lease_duration: Duration,
    /// Steal one lease per round from an overloaded worker.
    pub steal: bool,
    /// At most this many leases for this worker.
    pub max_leases: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    counter: u64,
    owner: Option<String>,
    since: Instant,
}

/// What one worker has observed of the lease table: for each lease, its counter and
/// owner and when this worker first saw them (the KCL's `lastCounterIncrementNanos`).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    seen: HashMap<ShardId, Seen>,
}

impl Observed {
    /// Records a scan of the table made at `now` (after the Scan returned: the counters
    /// were current at some moment before). Leases gone from the table are forgotten.
    pub fn observe(&mut self, leases: &[Lease], now: Instant) {
        let present: HashSet<&ShardId> = leases.iter().map(|l| &l.shard).collect();
        self.seen.retain(|s, _| present.contains(s));
        for l in leases {
            match self.seen.get_mut(&l.shard) {
                Some(s) if s.counter == l.counter && s.owner == l.owner => {}
                Some(s) => {
                    *s = Seen {
                        counter: l.counter,
                        owner: l.owner.clone(),
                        since: now,
                    }
                }
                None => {
                    self.seen.insert(
                        l.shard.clone(),
                        Seen {
                            counter: l.counter,
                            owner: l.owner.clone(),
                            since: now,
                        },
                    );
                }
            }
        }
    }

    /// Records this worker's own successful take (counter `counter`, sent at `at`).
    pub fn taken(&mut self, shard: &ShardId, counter: u64, owner: &WorkerId, at: Instant) {
        self.seen.insert(
            shard.clone(),
            Seen {
                counter,
                owner: Some(owner.to_string()),
                since: at,
            },
        );
    }

    /// The earliest instant at which a lease owned by another worker would count as
    /// expired if its counter keeps standing still (first observation + `duration`), or
    /// `None` when no such lease is observed. The acquisition loop schedules a round
    /// for that instant, so a dead holder's lease is taken about one lease duration
    /// after its last renewal was observed, instead of waiting for the next fixed round.
    pub fn next_expiry(&self, me: &WorkerId, duration: Duration) -> Option<Instant> {
        self.seen
            .values()
            .filter(|s| s.owner.as_deref().is_some_and(|o| o != me))
            .map(|s| s.since + duration)
            .min()
    }

    /// Whether `lease` is owned and its counter, as it is now, has stood still for
    /// `duration` in this worker's observation.
    pub fn is_expired(&self, lease: &Lease, now: Instant, duration: Duration) -> bool {
        lease.owner.is_some()
            && self.seen.get(&lease.shard).is_some_and(|s| {
                s.counter == lease.counter
                    && s.owner == lease.owner
                    && stood_still(s.since, now, duration)
            })
    }
}

/// This worker: its id and the leases it holds (shard → tenure token).
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    /// This worker's id.
    pub id: &'a WorkerId,
    /// The leases this worker believes it holds, with their tokens.
    pub held: &'a HashMap<ShardId, String>,
}

/// Why a lease is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum How {
    /// Nobody holds it.
    Free,
    /// Its holder stopped renewing it.
    Expired,
    /// Its holder is alive but holds too many (balance).
    Stolen,
}

impl How {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            How::Free => "free",
            How::Expired => "expired",
            How::Stolen => "stolen",
        }
    }
}

/// One lease to take: conditional on its counter still being `counter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// The lease's shard.
    pub shard: ShardId,
    /// The counter seen in the scan (the take's condition).
    pub counter: u64,
    /// Why it is taken.
    pub how: How,
    /// The holder it is taken from (expired or stolen).
    pub from: Option<String>,
}

/// What one worker does this round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// This worker's fair share.
    pub target: usize,
    /// Leases held here that the table gives to someone else (or to another tenure of
    /// this worker, or to nobody): shard and who holds it now.
    pub lost: Vec<(ShardId, String)>,
    /// Free, then expired leases, at most up to the target.
    pub take: Vec<Take>,
    /// One lease of the most loaded other worker, when still below the target.
    pub steal: Option<Take>,
}

/// Decides this round for worker `me` from the table as scanned (`leases`, after
/// [`Observed::observe`] recorded it) at `now`.
pub fn plan(
    leases: &[Lease],
    observed: &Observed,
    me: Me<'_>,
    now: Instant,
    balance: &Balance,
) -> Plan {
    let by_shard: HashMap<&ShardId, &Lease> = leases.iter().map(|l| (&l.shard, l)).collect();
    let mut lost = Vec::new();
    let mut mine: HashSet<&ShardId> = HashSet::new();
    for (shard, token) in me.held {
        match by_shard.get(shard) {
            Some(l) if l.owner.as_deref() == Some(me.id) && l.token.as_ref() == Some(token) => {
                mine.insert(&l.shard);
            }
            Some(l) => lost.push((
                shard.clone(),
                l.owner.clone().unwrap_or_else(|| "nobody".into()),
            )),
            None => lost.push((shard.clone(), "nobody (lease item deleted)".into())),
        }
    }
    lost.sort();

    let finished: HashSet<&ShardId> = leases
        .iter()
        .filter(|l| l.finished)
        .map(|l| &l.shard)
        .collect();
    let active: Vec<&Lease> = leases
        .iter()
        .filter(|l| {
            !l.finished
                && l.parents
                    .iter()
                    .all(|p| finished.contains(p) || !by_shard.contains_key(p))
        })
        .collect();
    let expired =
        |l: &Lease| !mine.contains(&l.shard) && observed.is_expired(l, now, balance.lease_duration);

    // Load of every live worker other than me (ordered: ties go to the smallest id).
    let mut others: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
    for l in &active {
        if let Some(o) = l.owner.as_deref()
            && o != me.id
            && !expired(l)
        {
            others.entry(o).or_default().push(l);
        }
    }
    let live = others.len() + 1;
    let mut target = active.len().div_ceil(live);
    if let Some(max) = balance.max_leases {
        target = target.min(max);
    }
    let need = target.saturating_sub(mine.len());

    // Free leases first, from an offset that differs per worker so that workers starting
    // together do not all race for one shard; then expired ones.
    let mut free: Vec<&Lease> = active
        .iter()
        .copied()
        .filter(|l| l.owner.is_none())
        .collect();
    let offset = rotation(me.id, free.len());
    free.rotate_left(offset);
    let mut stale: Vec<&Lease> = active.iter().copied().filter(|l| expired(l)).collect();
    let offset = rotation(me.id, stale.len());
    stale.rotate_left(offset);
    let take: Vec<Take> = free
        .into_iter()
        .map(|l| (l, How::Free))
        .chain(stale.into_iter().map(|l| (l, How::Expired)))
        .take(need)
        .map(|(l, how)| Take {
            shard: l.shard.clone(),
            counter: l.counter,
            how,
            from: l.owner.clone(),
        })
        .collect();

    let after = mine.len() + take.len();
    let steal = if balance.steal && after < target {
        others
            .iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(a.0)))
            .filter(|(_, theirs)| theirs.len() >= after + 2)
            .map(|(owner, theirs)| {
                let l = theirs[rotation(me.id, theirs.len())];
                Take {
                    shard: l.shard.clone(),
                    counter: l.counter,
                    how: How::Stolen,
                    from: Some(owner.to_string()),
                }
            })
    } else {
        None
    };
    Plan {
        target,
        lost,
        take,
        steal,
    }
}

/// A per-worker starting offset into a list of `len` candidates.
fn rotation(worker: &WorkerId, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let h = worker.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (h % len as u64) as usize
}

#[cfg(test)]
mod tests;
