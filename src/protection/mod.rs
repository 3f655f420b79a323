//! ECS task scale-in protection (`proxy.scale_in_protection`).
//!
//! ECS service scale-in picks tasks to stop without asking; a media server
//! that holds a publisher, or a proxy that forwards one, would cut a live
//! stream. Scale-in skips protected tasks, so:
//!
//! - **Media servers** discovered from Cloud Map (each one an ECS task: the
//!   instance id is the task id, the cluster is `ECS_CLUSTER_NAME` unless
//!   configured) are protected through the ECS API while they hold streams,
//!   and released `release_after` their last one ended; see [`tracker`] for
//!   the rules that keep several proxies from releasing each other's
//!   servers.
//! - **This proxy's own task** is protected through the ECS agent
//!   ([`agent`]) while it holds sessions, so the proxy service's scale-in
//!   picks idle proxies, and released as soon as it starts draining.
//!
//! Everything runs on one dedicated runtime thread, like the Redis slot
//! store: Pingora's background services stop at shutdown, and protection
//! must outlive the listeners through a drain. The data path never waits on
//! it: the loops only read the slot table and the lifecycle.

pub mod agent;
pub mod ecs;
pub mod outcome;
pub mod tracker;

use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};

use crate::backoff::Backoff;
use crate::balancer::redis::SharedSlots;
use crate::balancer::{SlotTable, TaskRef};
use crate::config::{ProtectionConfig, ProxyConfig};
use crate::lifecycle::{Lifecycle, Phase};
use crate::metrics;
use agent::{Agent, Reply};
use ecs::EcsApi;
use outcome::{CallError, Outcome};
use tracker::{Load, Op, Round, Timing, Tracker};

/// How often the loops look at the slot table and the lifecycle: a new
/// stream's server is protected within this (plus the call).
const TICK: Duration = Duration::from_millis(250);
/// Budget of one API or agent call, SDK retries included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// `UpdateTaskProtection` takes at most 10 tasks.
const BATCH: usize = 10;
/// Backoff after a failed call: from 1 s up to a minute (throttling is
/// account-wide, so every call of the loop waits).
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Longest the exit waits for the last releases.
const EXIT_RELEASE_LIMIT: Duration = Duration::from_secs(5);

/// A media server's task, with its cluster resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    pub cluster: String,
    pub id: String,
}

pub struct Protection {
    settings: ProtectionConfig,
    media: Mutex<Tracker<TaskKey>>,
    table: Arc<SlotTable>,
    /// Counts across every proxy, without which no media server is released.
    shared: Option<Arc<SharedSlots>>,
    /// Region of the media servers' tasks, when configured.
    region: Option<String>,
    /// Built on the runtime at first use (the SDK's config loads async).
    api: tokio::sync::OnceCell<EcsApi>,
    runtime: tokio::runtime::Handle,
}

impl Protection {
    /// Starts the media-server loop and, when `ECS_AGENT_URI` is set, the
    /// loop for this proxy's own task, on a dedicated runtime.
    pub fn start(
        config: &ProxyConfig,
        table: Arc<SlotTable>,
        lifecycle: Arc<Lifecycle>,
        shared: Option<Arc<SharedSlots>>,
    ) -> Result<Arc<Self>, crate::runtime::RuntimeError> {
        let settings = config.scale_in_protection.clone();
        // A bad agent URI costs the self-protection, not the proxy.
        let agent = Agent::from_env(CALL_TIMEOUT).unwrap_or_else(|e| {
            warn!("scale-in protection of this proxy's own task is off: {e}");
            None
        });
        let handle = crate::runtime::dedicated("protection")?;
        let can_release = if shared.is_some() {
            "released when no proxy has a stream on them (Redis slot store)"
        } else {
            "never released, left to expire (local slot store: other proxies' streams are unknown)"
        };
        let me = Arc::new(Self {
            media: Mutex::new(Tracker::new(timing(&settings))),
            settings,
            table: table.clone(),
            shared,
            // The tasks live in the region of the Cloud Map namespace ECS
            // registered them in.
            region: config
                .backends
                .cloud_map
                .as_ref()
                .and_then(|c| c.region.clone()),
            api: tokio::sync::OnceCell::new(),
            runtime: handle.clone(),
        });
        info!(
            "scale-in protection on: media servers protected for {} while they hold streams, renewed every {}, {can_release}",
            humantime::format_duration(me.settings.expires.get()),
            humantime::format_duration(me.settings.renew_every()),
        );
        handle.spawn(me.clone().media_loop());
        if me.shared.is_some() {
            let exiting = me.clone();
            lifecycle.before_exit(move || exiting.release_before_exit(EXIT_RELEASE_LIMIT));
        }
        match agent {
            Some(agent) => {
                info!(
                    "scale-in protection of this proxy's own task through the ECS agent at {}",
                    agent.url()
                );
                handle.spawn(me.clone().self_loop(agent, lifecycle));
            }
            None if !std::env::var(agent::ENV).is_ok_and(|v| !v.is_empty()) => info!(
                "{} is not set (not on ECS): this proxy's own task is not protected",
                agent::ENV
            ),
            None => {}
        }
        Ok(me)
    }

    fn media(&self) -> MutexGuard<'_, Tracker<TaskKey>> {
        self.media.lock()
    }

    /// The task with its cluster: the configured one, else the instance's
    /// `ECS_CLUSTER_NAME`; `None` without either.
    fn key(&self, task: &TaskRef) -> Option<TaskKey> {
        let cluster = if self.settings.cluster.is_empty() {
            task.cluster.clone()?
        } else {
            self.settings.cluster.clone()
        };
        Some(TaskKey {
            cluster,
            id: task.id.clone(),
        })
    }

    /// Until when `task` is protected, as ECS last answered this proxy.
    pub fn protected_until(&self, task: &TaskRef) -> Option<SystemTime> {
        let key = self.key(task)?;
        self.media().protected_until(&key, SystemTime::now())
    }

    async fn api(&self) -> &EcsApi {
        self.api
            .get_or_init(|| {
                EcsApi::new(
                    self.settings.endpoint.as_deref(),
                    self.region.as_deref(),
                    CALL_TIMEOUT,
                )
            })
            .await
    }

    async fn media_loop(self: Arc<Self>) {
        self.api().await;
        let mut calls = Calls::new("media");
        let mut no_cluster = HashSet::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if calls.backing_off() {
                continue;
            }
            self.media_round(&mut calls, &mut no_cluster, None).await;
        }
    }

    /// Reads the slot table, then makes the calls the tracker asks for.
    /// `exiting`: the moment the drain ended, for the last round before
    /// the exit, which releases idle servers without waiting
    /// `release_after`. One round reads top to bottom: observe, decide,
    /// call, record; split, each part would need the round's state.
    async fn media_round(
        &self,
        calls: &mut Calls,
        no_cluster: &mut HashSet<String>,
        exiting: Option<Instant>,
    ) {
        let api = self.api().await;
        let minutes = self.settings.expires_in_minutes();
        // Freshness first: the snapshot read after it is at least as new.
        let counts_read_at = self.shared.as_ref().and_then(|s| s.counts_read_at());
        let can_release = self.shared.as_ref().is_some_and(|s| !s.degraded());
        let mut loads: HashMap<TaskKey, Load> = HashMap::new();
        for b in self.table.snapshot() {
            let Some(task) = &b.task else { continue };
            let Some(key) = self.key(task) else {
                if b.active > 0 && no_cluster.insert(task.id.clone()) {
                    warn!(
                        "scale-in protection: task {:?} ({}) has no ECS_CLUSTER_NAME attribute and \
                         proxy.scale_in_protection.cluster is not set; it is not protected",
                        task.id, b.addr
                    );
                }
                continue;
            };
            let load = loads.entry(key).or_default();
            load.local += b.active;
            load.shared += b.active + b.remote;
        }
        let round = Round {
            // At exit: every stream here had ended when the drain did.
            now: exiting.unwrap_or_else(Instant::now),
            wall: SystemTime::now(),
            can_release,
            counts_read_at,
            release_now: false,
            release_idle_now: exiting.is_some(),
        };
        let ops = self.media().plan(&loads, &round);
        let mut batches: BTreeMap<(String, bool), Vec<String>> = BTreeMap::new();
        for (key, op) in ops {
            batches
                .entry((key.cluster, op == Op::Enable))
                .or_default()
                .push(key.id);
        }
        'calls: for ((cluster, enable), ids) in batches {
            for chunk in ids.chunks(BATCH) {
                match api.update(&cluster, chunk, enable, minutes).await {
                    Ok(answer) => {
                        let outcome = if answer.failures.is_empty() {
                            Outcome::Ok
                        } else {
                            Outcome::TaskFailure
                        };
                        calls.succeeded(outcome);
                        self.apply(&cluster, chunk, enable, answer);
                    }
                    Err(e) => {
                        if enable {
                            let wall = SystemTime::now();
                            let mut media = self.media();
                            for id in chunk {
                                let key = TaskKey {
                                    cluster: cluster.clone(),
                                    id: id.clone(),
                                };
                                media.enable_unanswered(&key, wall);
                            }
                        }
                        // Throttling and access denial are account-wide:
                        // the rest waits for the backoff.
                        calls.failed(&e);
                        break 'calls;
                    }
                }
            }
        }
        let protected = self.media().protected_count(SystemTime::now());
        metrics::get()
            .protected_tasks
            .with_label_values(&["media"])
            .set(protected as i64);
    }

    /// Called on the drain thread just before the process exits: releases
    /// the servers whose last stream (here and, per Redis, anywhere) has
    /// ended, instead of leaving them protected until expiry because this
    /// process is gone before `release_after`. Blocks at most `limit`.
    fn release_before_exit(self: &Arc<Self>, limit: Duration) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let drained = Instant::now();
        let me = self.clone();
        let last = self.runtime.spawn(async move {
            // Our last leases went with a release message, which makes
            // every proxy (this one too) read the counts at once: wait for
            // a read that began after the drain ended.
            while shared.counts_read_at().is_none_or(|t| t < drained) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut calls = Calls::new("media");
            me.media_round(&mut calls, &mut HashSet::new(), Some(drained))
                .await;
        });
        let waited = self
            .runtime
            .block_on(async { tokio::time::timeout(limit, last).await });
        if waited.is_err() {
            warn!(
                "scale-in protection: no release before exit within {}; servers stay protected until expiry",
                humantime::format_duration(limit)
            );
        }
    }

    /// Records what ECS answered for `ids` of `cluster`.
    fn apply(&self, cluster: &str, ids: &[String], enable: bool, answer: ecs::Answer) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let op = if enable { Op::Enable } else { Op::Disable };
        let by_id: HashMap<&str, &String> = ids.iter().map(|id| (ecs::task_id(id), id)).collect();
        let key = |id: &str| TaskKey {
            cluster: cluster.to_string(),
            id: by_id.get(id).map_or(id, |s| s.as_str()).to_string(),
        };
        let mut media = self.media();
        let mut answered = HashSet::new();
        for (id, reason) in &answer.failures {
            let k = key(id);
            answered.insert(k.id.clone());
            if media.task_failed(&k, op, reason, now).as_deref() != Some(reason.as_str()) {
                warn!(
                    "scale-in protection: ECS refused to turn {} protection of task {} (cluster {cluster:?}): {reason}",
                    if enable { "on" } else { "off" },
                    k.id
                );
            }
        }
        let mut done: Vec<(TaskKey, Option<SystemTime>)> = answer
            .protected
            .into_iter()
            .map(|(id, until)| (key(&id), until))
            .collect();
        // A task the answer does not mention was not refused: count it done.
        for id in ids {
            if !answered.contains(id) && !done.iter().any(|(k, _)| &k.id == id) {
                done.push((key(id), None));
            }
        }
        for (k, until) in done {
            if answered.contains(&k.id) {
                continue;
            }
            if enable {
                let was = media.protected_until(&k, wall);
                let until = until.unwrap_or(
                    wall.checked_add(self.settings.expires.get())
                        .unwrap_or(wall),
                );
                media.enabled(&k, until, now);
                if was.is_none() {
                    info!(
                        "scale-in protection on for task {} (cluster {cluster:?}) until {}",
                        k.id,
                        humantime::format_rfc3339_seconds(until)
                    );
                } else {
                    debug!("scale-in protection of task {} renewed", k.id);
                }
            } else {
                media.disabled(&k, now);
                info!(
                    "scale-in protection off for task {} (cluster {cluster:?}): no stream left",
                    k.id
                );
            }
            if let Some(previous) = media.clear_failure(&k) {
                info!(
                    "scale-in protection: task {} accepted again (was refused: {previous})",
                    k.id
                );
            }
        }
    }

    /// This proxy's own task, through the ECS agent. One loop: the phase
    /// (serving, draining, handed off) decides each tick, and its branches
    /// read best side by side.
    async fn self_loop(self: Arc<Self>, agent: Agent, lifecycle: Arc<Lifecycle>) {
        let minutes = self.settings.expires_in_minutes();
        let mut me: Tracker<()> = Tracker::new(timing(&self.settings));
        let mut calls = Calls::new("self");
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let phase = lifecycle.phase();
            if phase == Phase::HandedOff {
                // The new process runs in the same task and counts our
                // streams as inherited: a release from here would undo its
                // protection.
                info!("upgrade: the new process looks after this task's scale-in protection");
                return;
            }
            if calls.backing_off() {
                continue;
            }
            let now = Instant::now();
            // An upgraded process also holds its predecessor's streams.
            let busy = lifecycle.sessions() + self.table.inherited();
            let loads = HashMap::from([(
                (),
                Load {
                    local: busy,
                    shared: busy,
                },
            )]);
            let round = Round {
                now,
                wall: SystemTime::now(),
                can_release: true,
                counts_read_at: Some(now),
                release_now: phase == Phase::Draining,
                release_idle_now: false,
            };
            for (_, op) in me.plan(&loads, &round) {
                let enable = op == Op::Enable;
                match agent.put(enable, minutes).await {
                    Ok(Reply::Set(until)) => {
                        calls.succeeded(Outcome::Ok);
                        let (now, wall) = (Instant::now(), SystemTime::now());
                        if enable {
                            let was = me.protected_until(&(), wall);
                            if was.is_none() {
                                info!("scale-in protection on for this proxy's task: it holds {busy} stream(s)");
                            }
                            me.enabled(
                                &(),
                                until.unwrap_or(
                                    wall.checked_add(self.settings.expires.get())
                                        .unwrap_or(wall),
                                ),
                                now,
                            );
                        } else {
                            me.disabled(&(), now);
                            let why = if phase == Phase::Draining {
                                "draining"
                            } else {
                                "no stream left"
                            };
                            info!("scale-in protection off for this proxy's task: {why}");
                        }
                        if let Some(previous) = me.clear_failure(&()) {
                            info!("scale-in protection of this proxy's task accepted again (was refused: {previous})");
                        }
                    }
                    Ok(Reply::Failure(reason)) => {
                        calls.succeeded(Outcome::TaskFailure);
                        if me.task_failed(&(), op, &reason, Instant::now()).as_deref()
                            != Some(reason.as_str())
                        {
                            warn!("scale-in protection: ECS refused to protect this proxy's task: {reason}");
                        }
                    }
                    Err(e) => {
                        if enable {
                            me.enable_unanswered(&(), SystemTime::now());
                        }
                        calls.failed(&e);
                    }
                }
            }
            metrics::get()
                .protected_tasks
                .with_label_values(&["self"])
                .set(me.protected_count(SystemTime::now()) as i64);
        }
    }
}

fn timing(s: &ProtectionConfig) -> Timing {
    Timing {
        expires: s.expires.get(),
        renew_every: s.renew_every(),
        release_after: s.release_after.get(),
    }
}

/// One target's calls: counted, failures logged once per change of kind,
/// and paced by a backoff while they fail.
struct Calls {
    target: &'static str,
    backoff: Backoff,
    retry_at: Option<Instant>,
    failing: Option<Outcome>,
    failures: u64,
}

impl Calls {
    fn new(target: &'static str) -> Self {
        Self {
            target,
            backoff: Backoff::new(BACKOFF_BASE, BACKOFF_CAP),
            retry_at: None,
            failing: None,
            failures: 0,
        }
    }

    fn backing_off(&self) -> bool {
        self.retry_at.is_some_and(|t| Instant::now() < t)
    }

    fn count(&self, outcome: Outcome) {
        metrics::get()
            .protection_calls
            .with_label_values(&[self.target, outcome.label()])
            .inc();
    }

    /// The call went through (`Ok`, or `TaskFailure` for per-task refusals).
    fn succeeded(&mut self, outcome: Outcome) {
        self.count(outcome);
        if self.failing.take().is_some() {
            info!(
                "scale-in protection ({}): calls succeed again after {} failed call(s)",
                self.target, self.failures
            );
        }
        self.failures = 0;
        self.retry_at = None;
        self.backoff.reset();
    }

    fn failed(&mut self, e: &CallError) {
        self.count(e.outcome);
        self.failures += 1;
        let delay = self.backoff.next_delay();
        let now = Instant::now();
        self.retry_at = Some(now.checked_add(delay).unwrap_or(now));
        if self.failing != Some(e.outcome) {
            warn!(
                "scale-in protection ({}) failing: {e}; retrying with backoff (streams are not affected)",
                self.target
            );
        }
        self.failing = Some(e.outcome);
    }
}
