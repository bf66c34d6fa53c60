//! Hint delivery: the round each second that offers every target that is
//! up its queued hints, oldest first, and what becomes of each.

use std::sync::Arc;
use std::time::Duration;

use super::{DELIVERY_CONCURRENCY, Delivery, Hints, PAGE, decode_hint, queue_prefix};
use crate::coordinator::StoreError;
use crate::net::{NetError, Request, Response, Transport};
use crate::periodic::Periodic;
use crate::storage::keys::prefix_end;
use crate::storage::refused_until_restart;

impl Hints {
    /// Delivers up to `limit` of `target`'s hints, oldest first, dropping
    /// those past the window; stops at the first the target does not take.
    pub async fn deliver<T: Transport>(
        &self,
        target: &str,
        transport: &T,
        limit: usize,
    ) -> Result<Delivery, StoreError> {
        let prefix = queue_prefix(target);
        let end = prefix_end(&prefix);
        let mut cursor = prefix.clone();
        let mut report = Delivery::default();
        let mut seen = 0;
        'round: while seen < limit && report.failed.is_none() {
            let page = self
                .engine
                .scan(&cursor, end.as_deref(), PAGE.min(limit - seen))?;
            let Some((last, _)) = page.last() else { break };
            cursor = crate::storage::keys::successor(last);
            seen += page.len();
            let now = self.hlc.wall_ms();
            let mut live = Vec::with_capacity(page.len());
            for (raw_key, raw_value) in page {
                let size = (raw_key.len() + raw_value.len()) as u64;
                let hint = match decode_hint(&raw_value) {
                    Some(hint) if now.saturating_sub(hint.created_ms) <= self.config.window_ms => {
                        hint
                    }
                    other => {
                        let fate = other.map_or(Fate::Corrupt, |_| Fate::Expired);
                        if !self.settle(target, &raw_key, size, fate, &mut report) {
                            break 'round;
                        }
                        continue;
                    }
                };
                live.push((raw_key, size, hint));
            }
            for chunk in live.chunks(DELIVERY_CONCURRENCY) {
                let calls = chunk.iter().map(|(_, _, hint)| {
                    transport.call(
                        target,
                        Request::Write {
                            keyspace: hint.keyspace.clone(),
                            key: hint.key.clone(),
                            record: hint.record.clone(),
                        },
                    )
                });
                let answers = futures_util::future::join_all(calls).await;
                for ((raw_key, size, _), answer) in chunk.iter().zip(answers) {
                    let fate = fate_of(target, answer);
                    if !self.settle(target, raw_key, *size, fate, &mut report) {
                        break 'round;
                    }
                }
                if report.failed.is_some() {
                    break;
                }
            }
        }
        metrics::counter!("ringkv_hints_delivered_total").increment(report.delivered);
        metrics::counter!("ringkv_hints_dropped_total", "reason" => "expired")
            .increment(report.expired);
        metrics::counter!("ringkv_hints_dropped_total", "reason" => "refused")
            .increment(report.refused);
        metrics::counter!("ringkv_hints_dropped_total", "reason" => "corrupt")
            .increment(report.corrupt);
        self.publish_gauges();
        Ok(report)
    }

    /// Records what became of one hint in `report`, removing it unless it
    /// is kept. False when the round must stop at once: its removal failed.
    fn settle(
        &self,
        target: &str,
        raw_key: &[u8],
        size: u64,
        fate: Fate,
        report: &mut Delivery,
    ) -> bool {
        if let Fate::Kept(why) = fate {
            report.failed.get_or_insert(why);
            return true;
        }
        let delivered = matches!(fate, Fate::Delivered);
        if let Err(e) = self.forget(target, raw_key, size, delivered) {
            report.failed.get_or_insert(format!("removing a hint: {e}"));
            return false;
        }
        match fate {
            Fate::Delivered => report.delivered += 1,
            Fate::Expired => report.expired += 1,
            Fate::Corrupt => report.corrupt += 1,
            Fate::Refused => report.refused += 1,
            Fate::Kept(_) => {}
        }
        true
    }
}

/// What becomes of a hint in a delivery round.
enum Fate {
    Delivered,
    Expired,
    Corrupt,
    /// The target refused it for good: dropped.
    Refused,
    /// Not taken now (unreachable, or the target refuses writes until it
    /// restarts): kept, and the round stops after this chunk.
    Kept(String),
}

/// The fate of a hint from its target's answer.
fn fate_of(target: &str, answer: Result<Response, NetError>) -> Fate {
    match answer {
        Ok(Response::Written) => Fate::Delivered,
        // NOTE: the target lost its fsync and refuses writes until it
        // restarts: kept for then.
        Ok(Response::Error(why)) if refused_until_restart(&why) => Fate::Kept(why),
        Ok(other) => {
            // NOTE: the target answered and refused this write (clock skew,
            // unknown keyspace, bad record): retrying cannot help, and
            // keeping it would block the queue behind it.
            tracing::warn!(
                target_node = target,
                answer = ?other,
                "hint refused by its target: dropped"
            );
            Fate::Refused
        }
        Err(e) => Fate::Kept(e.to_string()),
    }
}

/// Most hints delivered to one target per round.
const HINTS_PER_ROUND: usize = 10_000;

/// The running hint delivery; [`HintDeliveryHandle::shutdown`] stops it and
/// waits for its current round (dropping it stops it without waiting).
#[derive(Debug)]
pub struct HintDeliveryHandle {
    worker: Periodic,
}

impl HintDeliveryHandle {
    /// Stops the task and waits for it.
    pub async fn shutdown(self) {
        self.worker.shutdown().await;
    }
}

/// Every `interval`, drops expired hints and delivers the queues of the
/// targets `is_up` says are alive.
pub fn spawn_hint_delivery<T: Transport>(
    hints: Arc<Hints>,
    transport: Arc<T>,
    is_up: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    interval: Duration,
) -> HintDeliveryHandle {
    let worker = Periodic::spawn(interval, (), move |()| {
        let (hints, transport, is_up) = (hints.clone(), transport.clone(), is_up.clone());
        async move { delivery_round(&hints, &*transport, &*is_up).await }
    });
    HintDeliveryHandle { worker }
}

/// One round of delivery: drops expired hints, then delivers the queues of
/// the targets `is_up` says are alive.
async fn delivery_round<T: Transport>(
    hints: &Hints,
    transport: &T,
    is_up: &(dyn Fn(&str) -> bool + Send + Sync),
) {
    if hints.write_error().is_some() {
        // NOTE: the hint store refuses writes until a restart (logged when
        // its fsync failed): no hint could be removed once delivered.
        return;
    }
    if let Err(e) = hints.drop_expired() {
        tracing::error!(error = %e, "dropping expired hints failed");
    }
    for target in hints.targets() {
        if !is_up(&target) {
            continue;
        }
        match hints.deliver(&target, transport, HINTS_PER_ROUND).await {
            Ok(report) if report.delivered > 0 => {
                tracing::info!(
                    target_node = %target,
                    delivered = report.delivered,
                    expired = report.expired,
                    refused = report.refused,
                    stopped_by = report.failed.as_deref().unwrap_or(""),
                    "hinted handoff"
                );
            }
            Ok(report) => {
                // NOTE: debug: a target gossip sees up but that does not
                // answer yet would log this every second.
                tracing::debug!(
                    target_node = %target,
                    failed = report.failed.as_deref().unwrap_or(""),
                    "no hint delivered this round"
                );
            }
            Err(e) => {
                tracing::error!(target_node = %target, error = %e, "hint delivery failed")
            }
        }
    }
}
