//! Waiting for a run's jobs: one question to the scheduler per interval for
//! all of them, never one per job and never a busy loop.
//!
//! Each stage thread waits for its own job in [`Queue::wait`]; whichever
//! waiter finds the last answer too old asks the scheduler about every
//! unfinished job at once, and the others are woken with the answer. The
//! interval is a quarter of the time since anything last happened (a
//! submission, or a job changing state), between [`MIN_INTERVAL`] and
//! [`MAX_INTERVAL`]: a small stage that just started is seen ending within
//! a fifth of a second, while a long one costs a poll every few seconds,
//! and finding an ending late costs at most a quarter of the wait so far.
//! A failing poll (controller busy or restarting) is retried at the next
//! interval; only [`MAX_POLL_FAILURES`] in a row fail the waiting jobs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Executor, JobId, JobState};

pub const MIN_INTERVAL: Duration = Duration::from_millis(200);
pub const MAX_INTERVAL: Duration = Duration::from_secs(5);
pub const MAX_POLL_FAILURES: u32 = 8;

/// How long to wait between polls when the last event was `since` ago.
fn interval(since: Duration) -> Duration {
    (since / 4).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

struct State {
    jobs: BTreeMap<JobId, JobState>,
    polling: bool,
    last_poll: Option<Instant>,
    /// The last submission, or the last change of a job's state.
    last_event: Instant,
    failures: u32,
    last_error: Option<String>,
    /// How many times the scheduler was asked (for tests).
    polls: u64,
}

pub struct Queue {
    exec: Arc<dyn Executor>,
    state: Mutex<State>,
    woken: Condvar,
}

/// How waiting for a job ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    Final(JobState),
    /// The run was interrupted; the job is still the scheduler's.
    Interrupted,
    /// The scheduler could not be asked (the last error).
    Unreachable(String),
}

impl Queue {
    pub fn new(exec: Arc<dyn Executor>) -> Self {
        let state = State {
            jobs: BTreeMap::new(),
            polling: false,
            last_poll: None,
            last_event: Instant::now(),
            failures: 0,
            last_error: None,
            polls: 0,
        };
        Self { exec, state: Mutex::new(state), woken: Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts following a submitted job.
    pub fn add(&self, id: &JobId) {
        let mut s = self.lock();
        s.jobs.insert(id.clone(), JobState::Queued);
        s.last_event = Instant::now();
    }

    pub fn polls(&self) -> u64 {
        self.lock().polls
    }

    /// Waits until job `id` ends or `cancel` is set, calling `watch` with
    /// the job's last known state at every wake-up (at least every 200 ms),
    /// without the queue's lock held.
    pub fn wait(&self, id: &JobId, cancel: &AtomicBool, watch: &dyn Fn(&JobState)) -> Waited {
        let mut s = self.lock();
        loop {
            let now = s.jobs.get(id).cloned().unwrap_or(JobState::Gone);
            drop(s);
            watch(&now);
            s = self.lock();
            if now.is_final() {
                s.jobs.remove(id);
                return Waited::Final(now);
            }
            if s.failures >= MAX_POLL_FAILURES {
                return Waited::Unreachable(s.last_error.clone().unwrap_or_default());
            }
            if cancel.load(Ordering::Relaxed) {
                return Waited::Interrupted;
            }
            let due = s.last_poll.map_or(Duration::ZERO, |t| interval(s.last_event.elapsed()).saturating_sub(t.elapsed()));
            if !s.polling && due.is_zero() {
                s = self.poll_all(s);
                continue;
            }
            // Wake at the next due poll, or soon enough to see an interrupt.
            let nap = if s.polling { Duration::from_millis(200) } else { due.min(Duration::from_millis(200)) };
            s = self.woken.wait_timeout(s, nap).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Asks the scheduler about every unfinished job, without holding the lock.
    fn poll_all<'a>(&'a self, mut s: std::sync::MutexGuard<'a, State>) -> std::sync::MutexGuard<'a, State> {
        s.polling = true;
        let ids: Vec<JobId> = s.jobs.iter().filter(|(_, st)| !st.is_final()).map(|(id, _)| id.clone()).collect();
        drop(s);
        let answer = self.exec.poll(&ids);
        let mut s = self.lock();
        s.polling = false;
        s.polls += 1;
        s.last_poll = Some(Instant::now());
        match answer {
            Ok(states) => {
                s.failures = 0;
                for id in ids {
                    let st = states.get(&id).cloned().unwrap_or(JobState::Gone);
                    if s.jobs.insert(id, st.clone()).is_some_and(|was| was != st) {
                        s.last_event = Instant::now();
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "asking the scheduler about the run's jobs failed; retrying");
                s.failures += 1;
                s.last_error = Some(e.to_string());
            }
        }
        self.woken.notify_all();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{ExecutorError, Prepared};

    /// Jobs that run for `polls_to_finish` polls, counting the polls.
    struct Fake {
        calls: Mutex<Vec<usize>>,
        polls_to_finish: usize,
    }

    impl Executor for Fake {
        fn label(&self) -> &str {
            "fake"
        }
        fn submit(&self, _: &Prepared) -> Result<JobId, ExecutorError> {
            unreachable!()
        }
        fn poll(&self, jobs: &[JobId]) -> Result<BTreeMap<JobId, JobState>, ExecutorError> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(jobs.len());
            let st = if calls.len() >= self.polls_to_finish { JobState::Completed } else { JobState::Running };
            Ok(jobs.iter().map(|j| (j.clone(), st.clone())).collect())
        }
        fn cancel(&self, _: &[JobId]) -> Result<(), ExecutorError> {
            Ok(())
        }
    }

    #[test]
    fn many_waiters_share_one_poll_per_interval() {
        let fake = Arc::new(Fake { calls: Mutex::new(Vec::new()), polls_to_finish: 3 });
        let q = Queue::new(fake.clone());
        let ids: Vec<JobId> = (0..6).map(|i| i.to_string()).collect();
        ids.iter().for_each(|id| q.add(id));
        let cancel = AtomicBool::new(false);
        std::thread::scope(|s| {
            for id in &ids {
                let (q, cancel) = (&q, &cancel);
                s.spawn(move || assert_eq!(q.wait(id, cancel, &|_| {}), Waited::Final(JobState::Completed)));
            }
        });
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 3, "one poll per interval for all six jobs: {calls:?}");
        assert_eq!(calls[0], 6, "the first poll asks about every job: {calls:?}");
    }

    #[test]
    fn the_interval_is_a_quarter_of_the_time_since_the_last_event() {
        assert_eq!(interval(Duration::ZERO), MIN_INTERVAL);
        assert_eq!(interval(Duration::from_secs(4)), Duration::from_secs(1));
        assert_eq!(interval(Duration::from_secs(600)), MAX_INTERVAL);
    }

    #[test]
    fn an_interrupt_stops_the_wait() {
        let fake = Arc::new(Fake { calls: Mutex::new(Vec::new()), polls_to_finish: usize::MAX });
        let q = Queue::new(fake);
        q.add(&"1".to_string());
        let cancel = AtomicBool::new(true);
        assert_eq!(q.wait(&"1".to_string(), &cancel, &|_| {}), Waited::Interrupted);
    }
}
