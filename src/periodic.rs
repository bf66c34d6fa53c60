//! Background work on a fixed period until asked to stop. The expiry sweep,
//! hint delivery and the once-a-second fsync share this loop; anti-entropy
//! keeps its own, because its pauses are jittered per round.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// A running periodic task. [`Periodic::shutdown`] stops it and waits for
/// its current tick; dropping it stops it too, without waiting.
#[derive(Debug)]
pub struct Periodic {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Periodic {
    /// Runs `tick` at once and then every `period` until
    /// [`Periodic::shutdown`], threading `state` from one tick to the next.
    /// A tick that overruns its period delays the next one instead of
    /// bunching catch-up ticks.
    pub fn spawn<S, F, Fut>(period: Duration, mut state: S, mut tick: F) -> Self
    where
        S: Send + 'static,
        F: FnMut(S) -> Fut + Send + 'static,
        Fut: Future<Output = S> + Send,
    {
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                // NOTE: biased, stop first: after an overrun the next tick is
                // due at once, and a stop asked during a tick must win.
                tokio::select! {
                    biased;
                    _ = stop_rx.changed() => return,
                    _ = ticker.tick() => {}
                }
                state = tick(state).await;
            }
        });
        Self { stop, task }
    }

    /// Stops the task once its current tick is done, and waits for that.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_on_its_period_with_state_and_stops_after_the_current_tick() {
        let ticks = Arc::new(AtomicU32::new(0));
        let seen = ticks.clone();
        let worker = Periodic::spawn(Duration::from_secs(1), 0u32, move |round| {
            let seen = seen.clone();
            async move {
                assert_eq!(round, seen.load(Ordering::SeqCst), "state threads through");
                seen.fetch_add(1, Ordering::SeqCst);
                round + 1
            }
        });
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3, "at 0 s, 1 s and 2 s");
        worker.shutdown().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3, "no tick after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_an_overrunning_tick_waits_for_it_and_runs_no_more() {
        let started = Arc::new(AtomicU32::new(0));
        let finished = Arc::new(AtomicU32::new(0));
        let (s, f) = (started.clone(), finished.clone());
        let worker = Periodic::spawn(Duration::from_secs(1), (), move |()| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                f.fetch_add(1, Ordering::SeqCst);
            }
        });
        // Ticks start at 0 s, 1.5 s and 3 s: each overruns the period, and
        // the next one follows it instead of bunching.
        tokio::time::sleep(Duration::from_millis(3_200)).await;
        assert_eq!(started.load(Ordering::SeqCst), 3);
        assert_eq!(finished.load(Ordering::SeqCst), 2);
        let asked = tokio::time::Instant::now();
        worker.shutdown().await;
        assert_eq!(
            finished.load(Ordering::SeqCst),
            3,
            "the tick in progress ended"
        );
        assert!(
            asked.elapsed() >= Duration::from_millis(1_300),
            "shutdown waited for it"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(started.load(Ordering::SeqCst), 3, "no tick after shutdown");
    }
}
