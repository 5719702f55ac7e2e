//! The balancing plan without DynamoDB: named cases, and a simulation of several workers
//! running rounds (renew, scan, plan, conditional takes, checkpoints) over a model of the
//! lease table with the coordinator's write conditions, driven by proptest.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;

const D: Duration = Duration::from_millis(3_000);
/// Renew and acquisition rounds, as the coordinator runs them (lease duration / 3).
const TICK: Duration = Duration::from_millis(1_000);

fn sid(i: usize) -> ShardId {
    ShardId::new(&format!("shardId-{i:012}"))
}

fn lease(i: usize, owner: Option<&str>, counter: u64) -> Lease {
    Lease {
        shard: sid(i),
        owner: owner.map(str::to_string),
        counter,
        token: owner.map(|o| token(o, counter)),
        expires_at_ms: None,
        checkpoint: None,
        parents: Vec::new(),
        finished: false,
    }
}

fn balance() -> Balance {
    Balance {
        lease_duration: D,
        steal: true,
        max_leases: None,
    }
}

/// The tokens `worker` holds according to `leases`.
fn held_by(leases: &[Lease], worker: &str) -> HashMap<ShardId, String> {
    leases
        .iter()
        .filter(|l| l.owner.as_deref() == Some(worker))
        .map(|l| (l.shard.clone(), l.token.clone().unwrap()))
        .collect()
}

fn plan_for(leases: &[Lease], observed: &Observed, worker: &str, now: Instant) -> Plan {
    let held = held_by(leases, worker);
    plan(
        leases,
        observed,
        Me {
            id: worker,
            held: &held,
        },
        now,
        &balance(),
    )
}

fn observed_at(leases: &[Lease], at: Instant) -> Observed {
    let mut o = Observed::default();
    o.observe(leases, at);
    o
}

#[test]
fn lease_plan_an_idle_worker_steals_from_one_holding_two() {
    // Today's defect: 4 shards, 3 workers at 2/2/0; target 2, nobody holds more than 2.
    let now = Instant::now();
    let leases = vec![
        lease(0, Some("a"), 5),
        lease(1, Some("a"), 5),
        lease(2, Some("b"), 5),
        lease(3, Some("b"), 5),
    ];
    let seen = observed_at(&leases, now);
    let c = plan_for(&leases, &seen, "c", now);
    assert_eq!(c.target, 2);
    assert!(c.take.is_empty());
    let steal = c.steal.expect("c steals");
    assert_eq!(steal.how, How::Stolen);
    assert!(steal.from.as_deref() == Some("a") || steal.from.as_deref() == Some("b"));

    // After the steal (2/1/1) nobody moves again: no ping-pong.
    let mut after = leases.clone();
    let l = after.iter_mut().find(|l| l.shard == steal.shard).unwrap();
    *l = lease(5, Some("c"), steal.counter + 1);
    l.shard = steal.shard.clone();
    let seen = observed_at(&after, now);
    for w in ["a", "b", "c"] {
        let p = plan_for(&after, &seen, w, now);
        assert!(p.take.is_empty() && p.steal.is_none(), "{w}: {p:?}");
    }
}

#[test]
fn lease_plan_three_workers_on_four_shards_settle_at_two_one_one() {
    let mut sim = Sim::new(3, &Topology::flat(4), 1);
    for _ in 0..30 {
        sim.tick();
    }
    let mut loads = sim.loads();
    loads.sort();
    assert_eq!(loads, vec![1, 1, 2], "{:?}", sim.table);
}

#[test]
fn lease_plan_no_steal_between_one_and_two() {
    // 2 shards over 3 workers (1/1/0) and 3 over 2 (2/1): stable, nothing to gain.
    let now = Instant::now();
    let leases = vec![lease(0, Some("a"), 1), lease(1, Some("b"), 1)];
    let seen = observed_at(&leases, now);
    assert_eq!(
        plan_for(&leases, &seen, "c", now),
        Plan {
            target: 1,
            ..Plan::default()
        }
    );
    let leases = vec![
        lease(0, Some("a"), 1),
        lease(1, Some("a"), 1),
        lease(2, Some("b"), 1),
    ];
    let seen = observed_at(&leases, now);
    let p = plan_for(&leases, &seen, "b", now);
    assert_eq!((p.take.len(), p.steal), (0, None));
}

#[test]
fn lease_plan_expiry_counts_from_the_first_observation_of_the_counter() {
    let t0 = Instant::now();
    let leases = vec![lease(0, Some("a"), 7), lease(1, Some("b"), 3)];
    let mut seen = Observed::default();
    seen.observe(&leases, t0);
    // Just short of a lease duration: nothing to take (b is at its share already).
    let p = plan_for(&leases, &seen, "b", t0 + D - Duration::from_millis(1));
    assert!(p.take.is_empty(), "{p:?}");
    // a renewed in between: the clock starts again at that observation.
    let mut renewed = leases.clone();
    renewed[0].counter = 8;
    seen.observe(&renewed, t0 + TICK);
    assert!(plan_for(&renewed, &seen, "b", t0 + D).take.is_empty());
    let p = plan_for(&renewed, &seen, "b", t0 + TICK + D);
    assert_eq!(p.target, 2, "a is not live any more");
    assert_eq!(
        p.take,
        vec![Take {
            shard: sid(0),
            counter: 8,
            how: How::Expired,
            from: Some("a".into()),
        }]
    );
    // A worker that never saw the counter before starts its own clock now.
    let fresh = observed_at(&renewed, t0 + TICK + D);
    assert!(
        plan_for(&renewed, &fresh, "b", t0 + TICK + D)
            .take
            .is_empty()
    );
}

#[test]
fn lease_plan_next_expiry_is_the_earliest_foreign_lease_standing_still() {
    let t0 = Instant::now();
    let leases = vec![
        lease(0, Some("a"), 7),
        lease(1, Some("b"), 3),
        lease(2, None, 0),
    ];
    let mut seen = Observed::default();
    assert_eq!(seen.next_expiry("b", D), None, "nothing observed yet");
    seen.observe(&leases, t0);
    // b's own lease and the free one never expire for b; a's does at t0 + D.
    assert_eq!(seen.next_expiry("b", D), Some(t0 + D));
    // a renews: its clock starts again at the observation of the new counter.
    let mut renewed = leases.clone();
    renewed[0].counter = 8;
    seen.observe(&renewed, t0 + TICK);
    assert_eq!(seen.next_expiry("b", D), Some(t0 + TICK + D));
    // At that instant the plan takes it: a round scheduled there is not wasted.
    let p = plan_for(&renewed, &seen, "b", t0 + TICK + D);
    assert!(
        p.take
            .iter()
            .any(|t| t.shard == sid(0) && t.how == How::Expired),
        "the lease expires exactly at next_expiry: {p:?}"
    );
    let early = plan_for(
        &renewed,
        &seen,
        "b",
        t0 + TICK + D - Duration::from_millis(1),
    );
    assert!(
        early.take.iter().all(|t| t.how != How::Expired),
        "{early:?}"
    );
    // For a, only b's lease can expire.
    assert_eq!(seen.next_expiry("a", D), Some(t0 + D));
}

#[test]
fn lease_plan_children_wait_for_all_their_parents() {
    let now = Instant::now();
    let mut leases = vec![
        lease(0, Some("a"), 2),
        lease(1, None, 1),
        lease(2, None, 0),
        lease(3, None, 0),
    ];
    leases[1].finished = true;
    // 2 is a split child of 0; 3 merges 0 and 1; 4 was trimmed: its child 5 is free to go.
    leases[2].parents = vec![sid(0)];
    leases[3].parents = vec![sid(0), sid(1)];
    let mut orphan = lease(5, None, 0);
    orphan.parents = vec![sid(4)];
    leases.push(orphan);
    let seen = observed_at(&leases, now);
    let p = plan_for(&leases, &seen, "b", now);
    let taken: Vec<&ShardId> = p.take.iter().map(|t| &t.shard).collect();
    assert_eq!(taken, vec![&sid(5)], "{p:?}");

    leases[0] = lease(0, None, 3);
    leases[0].finished = true;
    let seen = observed_at(&leases, now);
    let mut taken: Vec<ShardId> = plan_for(&leases, &seen, "b", now)
        .take
        .into_iter()
        .map(|t| t.shard)
        .collect();
    taken.sort();
    assert_eq!(taken, vec![sid(2), sid(3), sid(5)]);
}

#[test]
fn lease_plan_never_steals_from_itself_and_notices_lost_leases() {
    let now = Instant::now();
    // The table gives shard 0 to b, and shard 3 to an older tenure of a (a restart with
    // the same id): a holds neither, steals from nobody but b.
    let leases = vec![
        lease(0, Some("b"), 4),
        lease(1, Some("b"), 4),
        lease(2, Some("b"), 4),
        lease(3, Some("a"), 9),
    ];
    let held: HashMap<ShardId, String> = [(sid(0), token("a", 2)), (sid(3), token("a", 1))].into();
    let seen = observed_at(&leases, now);
    let p = plan(
        &leases,
        &seen,
        Me {
            id: "a",
            held: &held,
        },
        now,
        &balance(),
    );
    assert_eq!(
        p.lost,
        vec![(sid(0), "b".to_string()), (sid(3), "a".to_string())]
    );
    let steal = p.steal.expect("a holds nothing, b three");
    assert_eq!(steal.from.as_deref(), Some("b"));
    // Once a's old tenure of 3 stood still (b renewing meanwhile), a takes it as
    // expired, not as a steal.
    let mut later = leases.clone();
    for l in later.iter_mut().take(3) {
        l.counter += 1;
    }
    let mut seen = seen;
    seen.observe(&later, now + TICK);
    let p = plan(
        &later,
        &seen,
        Me {
            id: "a",
            held: &HashMap::new(),
        },
        now + D,
        &balance(),
    );
    assert_eq!(p.take.len(), 1);
    assert_eq!(
        (p.take[0].shard.clone(), p.take[0].how),
        (sid(3), How::Expired)
    );
}

#[test]
fn lease_plan_respects_max_leases() {
    let now = Instant::now();
    let leases: Vec<Lease> = (0..6).map(|i| lease(i, None, 0)).collect();
    let seen = observed_at(&leases, now);
    let p = plan(
        &leases,
        &seen,
        Me {
            id: "a",
            held: &HashMap::new(),
        },
        now,
        &Balance {
            max_leases: Some(2),
            ..balance()
        },
    );
    assert_eq!((p.target, p.take.len()), (2, 2));
}

// --- the simulation ------------------------------------------------------------------

/// Shards and their parents (indices), as ListShards would report them.
#[derive(Debug, Clone)]
struct Topology {
    parents: Vec<Vec<usize>>,
}

impl Topology {
    fn flat(n: usize) -> Topology {
        Topology {
            parents: vec![Vec::new(); n],
        }
    }

    /// `roots` shards, then `reshards` splits (two children of one open shard) or merges
    /// (one child of two open shards).
    fn random(roots: usize, reshards: usize, rng: &mut Rng) -> Topology {
        let mut parents = vec![Vec::new(); roots];
        let mut open: Vec<usize> = (0..roots).collect();
        for _ in 0..reshards {
            if open.len() >= 2 && rng.below(2) == 0 {
                let a = open.remove(rng.below(open.len()));
                let b = open.remove(rng.below(open.len()));
                parents.push(vec![a, b]);
                open.push(parents.len() - 1);
            } else {
                let p = open.remove(rng.below(open.len()));
                for _ in 0..2 {
                    parents.push(vec![p]);
                    open.push(parents.len() - 1);
                }
            }
        }
        Topology { parents }
    }
}

/// splitmix64: the simulation's choices, all from one proptest seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Worker {
    id: String,
    dead: bool,
    /// Not acting (a long pause, a partition) until this tick.
    paused_until: u64,
    /// shard → token, as the coordinator's `held`.
    held: HashMap<ShardId, String>,
    /// Send time of the last successful take or renewal, per held shard.
    renewed: HashMap<ShardId, Instant>,
    /// How far this worker has processed each held shard (resumes at the checkpoint).
    position: HashMap<ShardId, u64>,
    observed: Observed,
}

impl Worker {
    fn running(&self, tick: u64) -> bool {
        !self.dead && tick >= self.paused_until
    }

    fn drop_lease(&mut self, shard: &ShardId) {
        self.held.remove(shard);
        self.renewed.remove(shard);
        self.position.remove(shard);
    }
}

struct Sim {
    t0: Instant,
    tick: u64,
    table: Vec<Lease>,
    /// Committed position per shard (the lease item's checkpoint).
    checkpoints: BTreeMap<ShardId, u64>,
    workers: Vec<Worker>,
    rng: Rng,
    /// Probability (per mille) that a holder finishes a shard that has children, per tick.
    finish_per_mille: usize,
    /// Last tick at which ownership was disturbed (start, death, pause, shard finished).
    disturbed: u64,
    /// Last tick at which the set of running workers changed (for balance).
    membership: u64,
}

impl Sim {
    fn new(workers: usize, topology: &Topology, seed: u64) -> Sim {
        let table = topology
            .parents
            .iter()
            .enumerate()
            .map(|(i, ps)| Lease {
                parents: ps.iter().map(|p| sid(*p)).collect(),
                ..lease(i, None, 0)
            })
            .collect();
        Sim {
            t0: Instant::now(),
            tick: 0,
            table,
            checkpoints: BTreeMap::new(),
            workers: (0..workers)
                .map(|i| Worker {
                    id: format!("worker-{i}"),
                    dead: false,
                    paused_until: 0,
                    held: HashMap::new(),
                    renewed: HashMap::new(),
                    position: HashMap::new(),
                    observed: Observed::default(),
                })
                .collect(),
            rng: Rng(seed),
            finish_per_mille: 0,
            disturbed: 0,
            membership: 0,
        }
    }

    fn now(&self) -> Instant {
        self.t0 + TICK * self.tick as u32
    }

    fn lease_mut(&mut self, shard: &ShardId) -> &mut Lease {
        self.table.iter_mut().find(|l| &l.shard == shard).unwrap()
    }

    fn kill(&mut self, w: usize) {
        self.workers[w].dead = true;
        self.disturbed = self.tick;
        self.membership = self.tick;
    }

    fn pause(&mut self, w: usize, ticks: u64) {
        self.workers[w].paused_until = self.tick + ticks;
        self.disturbed = self.tick;
        self.membership = self.tick + ticks;
    }

    /// One round of every running worker, in a random order, then time advances.
    fn tick(&mut self) {
        let mut order: Vec<usize> = (0..self.workers.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.below(i + 1));
        }
        for w in order {
            if self.workers[w].running(self.tick) {
                self.renew(w);
                self.acquire(w);
                self.process(w);
            }
        }
        self.check_invariants();
        self.tick += 1;
    }

    /// Renewal: UpdateItem counter + 1 if owner = me AND token = mine.
    fn renew(&mut self, w: usize) {
        let now = self.now();
        let held: Vec<(ShardId, String)> = self.workers[w]
            .held
            .iter()
            .map(|(s, t)| (s.clone(), t.clone()))
            .collect();
        for (shard, tok) in held {
            let id = self.workers[w].id.clone();
            let l = self.lease_mut(&shard);
            if l.owner.as_deref() == Some(id.as_str()) && l.token.as_deref() == Some(&tok) {
                l.counter += 1;
                self.workers[w].renewed.insert(shard, now);
            } else {
                self.workers[w].drop_lease(&shard);
            }
        }
    }

    /// Scan, plan, conditional takes (as `LeaseCoordinator::acquire`).
    fn acquire(&mut self, w: usize) {
        let now = self.now();
        let scan = self.table.clone();
        let worker = &mut self.workers[w];
        worker.observed.observe(&scan, now);
        let p = plan(
            &scan,
            &worker.observed,
            Me {
                id: &worker.id,
                held: &worker.held,
            },
            now,
            &balance(),
        );
        let me = worker.id.clone();
        // Never from itself.
        for t in p.take.iter().chain(p.steal.as_ref()) {
            let valid = worker.held.get(&t.shard).is_some_and(|tok| {
                scan.iter()
                    .any(|l| l.shard == t.shard && l.token.as_ref() == Some(tok))
            });
            assert!(!valid, "{me} takes {} which it holds: {p:?}", t.shard);
        }
        if let Some(s) = &p.steal {
            assert_ne!(
                s.from.as_deref(),
                Some(me.as_str()),
                "{me} steals from itself"
            );
        }
        for (shard, _) in &p.lost {
            worker.drop_lease(shard);
        }
        for t in p.take.iter().chain(p.steal.as_ref()) {
            self.take(w, t);
        }
    }

    fn take(&mut self, w: usize, t: &Take) {
        let now = self.now();
        let me = self.workers[w].id.clone();
        let l = self
            .table
            .iter()
            .find(|l| l.shard == t.shard)
            .unwrap()
            .clone();
        if l.counter != t.counter {
            return;
        }
        // Parents before children.
        for p in &l.parents {
            if let Some(parent) = self.table.iter().find(|x| &x.shard == p) {
                assert!(
                    parent.finished,
                    "{me} takes {} before its parent {p}",
                    l.shard
                );
            }
        }
        // An expired lease's holder has given it up already (its own clock, send time
        // of its last renewal): it never processes alongside the new owner.
        if t.how == How::Expired {
            for other in &self.workers {
                if other.held.get(&l.shard) == l.token.as_ref() {
                    let since = other.renewed[&l.shard];
                    assert!(
                        stood_still(since, now, D),
                        "{me} takes {} as expired while {} renewed it {:?} ago",
                        l.shard,
                        other.id,
                        now - since
                    );
                }
            }
        }
        let next = l.counter + 1;
        let tok = token(&me, next);
        let lm = self.lease_mut(&t.shard);
        lm.owner = Some(me.clone());
        lm.token = Some(tok.clone());
        lm.counter = next;
        let committed = self.checkpoints.get(&t.shard).copied().unwrap_or(0);
        let worker = &mut self.workers[w];
        worker.held.insert(t.shard.clone(), tok);
        worker.renewed.insert(t.shard.clone(), now);
        worker.position.insert(t.shard.clone(), committed);
        worker.observed.taken(&t.shard, next, &me, now);
    }

    /// Processes a record on every lease it believes it holds, and checkpoints it
    /// (UpdateItem if owner = me AND token = mine); sometimes a closed shard ends.
    fn process(&mut self, w: usize) {
        let now = self.now();
        let me = self.workers[w].id.clone();
        let mut held: Vec<(ShardId, String)> = self.workers[w]
            .held
            .iter()
            .map(|(s, t)| (s.clone(), t.clone()))
            .collect();
        held.sort();
        for (shard, tok) in held {
            if stood_still(self.workers[w].renewed[&shard], now, D) {
                continue; // the handle reports the lease lost: the processor stops
            }
            let position = self.workers[w].position[&shard] + 1;
            self.workers[w].position.insert(shard.clone(), position);
            let l = self.lease_mut(&shard);
            if l.owner.as_deref() != Some(me.as_str()) || l.token.as_deref() != Some(&tok) {
                self.workers[w].drop_lease(&shard); // LeaseLost
                continue;
            }
            let committed = self.checkpoints.get(&shard).copied().unwrap_or(0);
            assert!(
                position > committed,
                "{me} would move {shard}'s checkpoint from {committed} back to {position}"
            );
            self.checkpoints.insert(shard.clone(), position);
            let has_children = self.table.iter().any(|c| c.parents.contains(&shard));
            if has_children && self.rng.below(1000) < self.finish_per_mille {
                // finish: SET finished, counter + 1 REMOVE owner, token
                let l = self.lease_mut(&shard);
                l.finished = true;
                l.counter += 1;
                l.owner = None;
                l.token = None;
                self.workers[w].drop_lease(&shard);
                self.disturbed = self.tick;
            }
        }
    }

    fn active(&self) -> Vec<&Lease> {
        self.table
            .iter()
            .filter(|l| {
                !l.finished
                    && l.parents.iter().all(|p| {
                        self.table
                            .iter()
                            .find(|x| &x.shard == p)
                            .is_none_or(|x| x.finished)
                    })
            })
            .collect()
    }

    /// Leases per running worker, by the table.
    fn loads(&self) -> Vec<usize> {
        self.workers
            .iter()
            .filter(|w| w.running(self.tick))
            .map(|w| {
                self.table
                    .iter()
                    .filter(|l| l.owner.as_deref() == Some(w.id.as_str()))
                    .count()
            })
            .collect()
    }

    fn check_invariants(&self) {
        // Parents before children: no owned lease has an unfinished parent.
        for l in &self.table {
            if l.owner.is_some() {
                for p in &l.parents {
                    if let Some(parent) = self.table.iter().find(|x| &x.shard == p) {
                        assert!(parent.finished, "{} owned before parent {p}", l.shard);
                    }
                }
            }
        }
        let running: Vec<&str> = self
            .workers
            .iter()
            .filter(|w| w.running(self.tick))
            .map(|w| w.id.as_str())
            .collect();
        // Every shard owned by a running worker within two lease durations.
        let quiet = TICK * (self.tick - self.disturbed) as u32;
        if quiet >= 2 * D {
            for l in self.active() {
                assert!(
                    l.owner.as_deref().is_some_and(|o| running.contains(&o)),
                    "tick {}: {} owned by {:?} {quiet:?} after the last disturbance \
                     (running {running:?})",
                    self.tick,
                    l.shard,
                    l.owner
                );
            }
        }
        // Settled: nobody idle while another holds two or more; spread at most one.
        let settled = self
            .tick
            .saturating_sub(self.disturbed.max(self.membership));
        if TICK * settled as u32 >= 6 * D {
            let loads = self.loads();
            let (min, max) = (
                loads.iter().min().copied().unwrap_or(0),
                loads.iter().max().copied().unwrap_or(0),
            );
            assert!(
                !(min == 0 && max >= 2),
                "tick {}: an idle worker beside one holding {max}: {loads:?}",
                self.tick
            );
            assert!(max - min <= 1, "tick {}: loads {loads:?}", self.tick);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random shard sets (splits and merges), worker deaths and pauses, shards finishing.
    #[test]
    fn lease_plan_simulated_workers_keep_every_shard_owned_and_balanced(
        seed in any::<u64>(),
        workers in 1usize..=5,
        roots in 1usize..=8,
        reshards in 0usize..=4,
        deaths in 0usize..=3,
        pauses in 0usize..=2,
    ) {
        let mut rng = Rng(seed);
        let topology = Topology::random(roots, reshards, &mut rng);
        let mut sim = Sim::new(workers, &topology, rng.next());
        sim.finish_per_mille = 30;
        // worker-0 never dies nor pauses: somebody is always there.
        let mut events: Vec<(u64, usize, Option<u64>)> = Vec::new();
        if workers > 1 {
            for _ in 0..deaths {
                events.push((rng.below(40) as u64, 1 + rng.below(workers - 1), None));
            }
            for _ in 0..pauses {
                let ticks = 1 + rng.below(8) as u64;
                events.push((rng.below(40) as u64, 1 + rng.below(workers - 1), Some(ticks)));
            }
        }
        for t in 0..70u64 {
            for &(at, w, pause) in &events {
                if at == t && !sim.workers[w].dead {
                    match pause {
                        None => sim.kill(w),
                        Some(ticks) => sim.pause(w, ticks),
                    }
                }
            }
            sim.tick();
        }
    }
}
