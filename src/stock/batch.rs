//! Group commit of claims per shard: the claims that arrive for one shard
//! while the previous script call on it is in flight go to Redis together,
//! as ONE call of `lua/claim.lua` (up to `FLASHGRAB_CLAIM_BATCH` claims).
//!
//! Why: a claim is a small script, and at drop rates most of its cost is
//! per call, not per claim: on the master the read/write syscalls, the
//! script call, reading the shard's terms and the clock; on our side the
//! cluster client's routing, encoding and channel hops. Batching pays those
//! once per batch. It adds no waiting: a worker takes whatever is queued
//! the moment it is free, so a lone claim goes alone, and batches grow only
//! when claims pile up behind a call in flight.
//!
//! Shape: one bounded queue and one worker task per shard that has seen a
//! claim recently. The worker runs one batch at a time (claims of a shard
//! are serialised by Redis anyway: one slot, one master), answers each
//! claim through its own oneshot, and retires after `IDLE` without claims
//! (it leaves the map first, then closes its queue and still answers
//! whatever was queued before the close, so no claim is dropped).
//!
//! Failure: the batch is one Redis call, so a timeout or error reaches
//! every claim of the batch (each answers 503, as a lone claim would). A
//! caller that goes away (client disconnected) does not cancel its claim:
//! it may still be granted, exactly as when a request is dropped while its
//! script runs; the grant is in Redis and its outbox like any other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Result, ShardClaim, ShardKeys, StockError, StockStore};

/// A worker without claims for this long stops (a campaign that ended, or a
/// quiet moment; the next claim starts a new one).
const IDLE: Duration = Duration::from_secs(5);

/// Claims queued per shard at most. The admission bound of the instance
/// (`FLASHGRAB_MAX_IN_FLIGHT`) keeps far fewer claims in flight; this bound
/// only keeps a bug from queueing without limit.
const QUEUE: usize = 4096;

/// One claim of a batch: what the script needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimItem {
    pub user: String,
    pub coupon: String,
    /// The `Idempotency-Key`, "" when none.
    pub key: String,
}

/// The shard a worker serves.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub keys: ShardKeys,
    pub campaign: String,
    pub shard: u32,
}

struct Pending {
    item: ClaimItem,
    reply: oneshot::Sender<Result<ShardClaim>>,
}

/// A worker's id and the sending side of its queue.
type Queue = (u64, mpsc::Sender<Pending>);

/// The queues of the shards that have a worker, by campaign id and shard
/// number: a claim finds its queue without building any key name (the
/// shard's keys are built once, when its worker starts).
pub(super) struct Batcher {
    max: usize,
    queues: Mutex<HashMap<String, HashMap<u32, Queue>>>,
    next_id: AtomicU64,
}

impl Batcher {
    pub fn new(max: usize) -> Self {
        Self { max: max.max(1), queues: Mutex::new(HashMap::new()), next_id: AtomicU64::new(0) }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Queues `item` for the worker of `campaign`'s `shard` (starting one,
    /// with the keys `target` builds, if needed) and waits for its answer.
    pub async fn submit(
        &self,
        store: &StockStore,
        campaign: &str,
        shard: u32,
        target: impl Fn() -> Target,
        item: ClaimItem,
    ) -> Result<ShardClaim> {
        let (reply, answer) = oneshot::channel();
        let mut pending = Pending { item, reply };
        // A worker may retire between our lookup and our send: then its
        // queue is closed and a new worker is started (at most twice).
        for _ in 0..3 {
            let (id, queue) = self.queue_for(store, campaign, shard, &target);
            match queue.try_send(pending) {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(StockError::Protocol("the claim batch worker stopped without answering".into()))
                    });
                }
                Err(mpsc::error::TrySendError::Full(_)) => return Err(StockError::Busy),
                Err(mpsc::error::TrySendError::Closed(p)) => {
                    pending = p;
                    self.forget(campaign, shard, id);
                }
            }
        }
        Err(StockError::Busy)
    }

    fn queue_for(&self, store: &StockStore, campaign: &str, shard: u32, target: &impl Fn() -> Target) -> Queue {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, q)) = queues.get(campaign).and_then(|shards| shards.get(&shard)) {
            return (*id, q.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        queues.entry(campaign.to_owned()).or_default().insert(shard, (id, tx.clone()));
        tokio::spawn(work(store.clone(), target(), id, rx));
        (id, tx)
    }

    /// Removes worker `id`'s queue from the map (not a newer one's).
    fn forget(&self, campaign: &str, shard: u32, id: u64) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let Some(shards) = queues.get_mut(campaign) else { return };
        if shards.get(&shard).is_some_and(|(current, _)| *current == id) {
            shards.remove(&shard);
            if shards.is_empty() {
                queues.remove(campaign);
            }
        }
    }

    /// Shards with a worker right now.
    pub fn workers(&self) -> usize {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).values().map(HashMap::len).sum()
    }
}

/// The worker of one shard: a batch at a time, whatever is queued when it
/// is free, up to the batch size.
async fn work(store: StockStore, target: Target, id: u64, mut queue: mpsc::Receiver<Pending>) {
    let max = store.batcher.max();
    let mut batch: Vec<Pending> = Vec::with_capacity(max);
    loop {
        match tokio::time::timeout(IDLE, queue.recv()).await {
            Ok(Some(p)) => batch.push(p),
            Ok(None) => break,
            Err(_) => {
                // Leave the map first: new claims then start a new worker.
                // Then close the queue and answer what got in before.
                store.batcher.forget(&target.campaign, target.shard, id);
                queue.close();
                while let Some(p) = queue.recv().await {
                    batch.push(p);
                    if batch.len() == max {
                        run(&store, &target, &mut batch).await;
                    }
                }
                break;
            }
        }
        while batch.len() < max {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        run(&store, &target, &mut batch).await;
    }
    if !batch.is_empty() {
        run(&store, &target, &mut batch).await;
    }
}

/// Runs one batch and answers each of its claims.
async fn run(store: &StockStore, target: &Target, batch: &mut Vec<Pending>) {
    let items: Vec<&ClaimItem> = batch.iter().map(|p| &p.item).collect();
    let result = store.claim_batch(&target.keys, &target.campaign, target.shard, &items).await;
    match result {
        Ok(answers) => {
            for (p, answer) in batch.drain(..).zip(answers) {
                let _ = p.reply.send(answer);
            }
        }
        Err(e) => {
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(e.duplicate()));
            }
        }
    }
}
