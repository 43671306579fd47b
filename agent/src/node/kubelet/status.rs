//! Pod status as kubelet writes it: phase, conditions, container statuses, IPs, QoS class. Built
//! from what a pod worker tracks ([`ContainerView`]); pure, so its rules are unit tested.

use k8s_openapi::api::core::v1::{
    ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus as K8sContainerStatus, Pod, PodCondition, PodIP,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What the worker knows of one container of the pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerView {
    /// Its name.
    pub name: String,
    /// The image from the spec.
    pub image: String,
    /// The image id, once created.
    pub image_id: String,
    /// `windlass://<id>`, once created.
    pub container_id: Option<String>,
    /// The current state.
    pub state: ViewState,
    /// The previous run's end, if it ran before.
    pub last_state: Option<ViewState>,
    /// Readiness (probe or running).
    pub ready: bool,
    /// Startup probe passed (or none and running).
    pub started: bool,
    /// Restarts so far.
    pub restart_count: i32,
}

/// A container state, as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ViewState {
    /// Not running: why.
    #[default]
    Waiting,
    /// Waiting with a reason (ContainerCreating, CrashLoopBackOff, ErrImagePull, ...).
    WaitingFor {
        /// The reason.
        reason: String,
        /// The message.
        message: String,
    },
    /// Running since.
    Running {
        /// RFC 3339.
        started_at: String,
    },
    /// Terminated.
    Terminated {
        /// Exit code.
        exit_code: i32,
        /// Completed, Error, OOMKilled.
        reason: String,
        /// RFC 3339.
        started_at: String,
        /// RFC 3339.
        finished_at: String,
        /// `windlass://<id>`.
        container_id: Option<String>,
    },
}

impl ViewState {
    fn to_k8s(&self) -> K8sState {
        let time = |t: &str| t.parse::<jiff::Timestamp>().ok().map(Time);
        match self {
            ViewState::Waiting => K8sState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ContainerCreating".into()),
                    message: None,
                }),
                ..Default::default()
            },
            ViewState::WaitingFor { reason, message } => K8sState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: Some(message.clone()).filter(|m| !m.is_empty()),
                }),
                ..Default::default()
            },
            ViewState::Running { started_at } => K8sState {
                running: Some(ContainerStateRunning {
                    started_at: time(started_at),
                }),
                ..Default::default()
            },
            ViewState::Terminated {
                exit_code,
                reason,
                started_at,
                finished_at,
                container_id,
            } => K8sState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    reason: Some(reason.clone()),
                    started_at: time(started_at),
                    finished_at: time(finished_at),
                    container_id: container_id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    /// Whether it is terminated.
    pub fn is_terminated(&self) -> bool {
        matches!(self, ViewState::Terminated { .. })
    }

    /// Whether it is terminated with exit code 0.
    pub fn succeeded(&self) -> bool {
        matches!(self, ViewState::Terminated { exit_code: 0, .. })
    }
}

/// Everything [`build`] needs besides the pod.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    /// Init containers, in spec order.
    pub init: Vec<ContainerView>,
    /// App containers, in spec order.
    pub containers: Vec<ContainerView>,
    /// Whether the sandbox is up with its network.
    pub sandbox_ready: bool,
    /// Whether every init container completed.
    pub initialized: bool,
    /// The pod's IP.
    pub pod_ip: Option<String>,
    /// The node's IP.
    pub host_ip: Option<String>,
    /// When the kubelet first took the pod, RFC 3339.
    pub start_time: Option<String>,
    /// Guaranteed, Burstable or BestEffort.
    pub qos_class: String,
    /// Set when the pod as a whole failed (init container failed with restartPolicy Never).
    pub failed: bool,
}

fn condition(kind: &str, ok: bool, old: &[PodCondition], reason: Option<&str>) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let previous = old.iter().find(|c| c.type_ == kind);
    let transition = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(Time(jiff::Timestamp::now())),
    };
    PodCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        last_transition_time: transition
            .map(|t| Time(t.0.round(jiff::Unit::Second).unwrap_or(t.0))),
        reason: if ok { None } else { reason.map(str::to_string) },
        ..Default::default()
    }
}

/// The phase, by kubelet's rules (`getPhase`).
pub fn phase(pod: &Pod, view: &PodView) -> &'static str {
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    if view.failed {
        return "Failed";
    }
    if !view.initialized {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &view.containers {
        match &c.state {
            ViewState::Running { .. } => running += 1,
            ViewState::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            _ => {
                if c.last_state.as_ref().is_some_and(ViewState::is_terminated) {
                    // Restarting after a crash counts as running for the phase.
                    running += 1;
                } else {
                    waiting += 1;
                }
            }
        }
    }
    let total = view.containers.len();
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped == total && total > 0 {
        if policy == "Always" {
            "Running"
        } else if succeeded == stopped {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    }
}

fn container_status(c: &ContainerView) -> K8sContainerStatus {
    K8sContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: c.container_id.clone(),
        state: Some(c.state.to_k8s()),
        last_state: Some(
            c.last_state
                .as_ref()
                .map(ViewState::to_k8s)
                .unwrap_or_default(),
        ),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        ..Default::default()
    }
}

/// The status to write for `pod`.
pub fn build(pod: &Pod, view: &PodView) -> PodStatus {
    let old = pod.status.clone().unwrap_or_default();
    let old_conditions = old.conditions.clone().unwrap_or_default();
    let phase = phase(pod, view);
    let containers_ready =
        !view.containers.is_empty() && view.containers.iter().all(|c| c.ready) && phase != "Failed";
    let not_ready: Vec<&str> = view
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let mut conditions: Vec<PodCondition> = old_conditions
        .iter()
        .filter(|c| {
            !matches!(
                c.type_.as_str(),
                "PodReadyToStartContainers" | "Initialized" | "ContainersReady" | "Ready"
            )
        })
        .cloned()
        .collect();
    let succeeded_or_failed = phase == "Succeeded" || phase == "Failed";
    conditions.push(condition(
        "PodReadyToStartContainers",
        view.sandbox_ready && !succeeded_or_failed,
        &old_conditions,
        None,
    ));
    conditions.push(condition(
        "Initialized",
        view.initialized,
        &old_conditions,
        Some("ContainersNotInitialized"),
    ));
    let mut ready = condition(
        "ContainersReady",
        containers_ready,
        &old_conditions,
        Some("ContainersNotReady"),
    );
    if !containers_ready && !not_ready.is_empty() {
        ready.message = Some(format!(
            "containers with unready status: [{}]",
            not_ready.join(" ")
        ));
    }
    // readinessGates: the pod is Ready only when every gate's condition (set by someone else)
    // is True too.
    let gates_missing: Vec<String> = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .filter(|g| {
            !old_conditions
                .iter()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        })
        .map(|g| g.condition_type.clone())
        .collect();
    let mut pod_ready = if containers_ready && !gates_missing.is_empty() {
        let mut c = condition(
            "Ready",
            false,
            &old_conditions,
            Some("ReadinessGatesNotReady"),
        );
        c.message = Some(format!(
            "corresponding condition of pod readiness gate \"{}\" does not exist.",
            gates_missing.join("\", \"")
        ));
        c
    } else {
        condition(
            "Ready",
            containers_ready,
            &old_conditions,
            Some("ContainersNotReady"),
        )
    };
    if pod_ready.message.is_none() {
        pod_ready.message = ready.message.clone();
    }
    conditions.push(ready);
    conditions.push(pod_ready);
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        container_statuses: Some(view.containers.iter().map(container_status).collect()),
        init_container_statuses: Some(view.init.iter().map(container_status).collect())
            .filter(|v: &Vec<_>| !v.is_empty()),
        pod_ip: view.pod_ip.clone(),
        pod_ips: view.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        host_ip: view.host_ip.clone(),
        host_ips: view
            .host_ip
            .clone()
            .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip }]),
        start_time: view
            .start_time
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(Time)
            .or(old.start_time),
        qos_class: Some(view.qos_class.clone()),
        nominated_node_name: old.nominated_node_name,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn pod(policy: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running() -> ContainerView {
        ContainerView {
            name: "app".into(),
            state: ViewState::Running {
                started_at: "2026-12-01T00:00:00Z".into(),
            },
            ready: true,
            started: true,
            ..Default::default()
        }
    }

    fn exited(code: i32) -> ContainerView {
        ContainerView {
            name: "app".into(),
            state: ViewState::Terminated {
                exit_code: code,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                started_at: "2026-12-01T00:00:00Z".into(),
                finished_at: "2026-12-01T00:00:01Z".into(),
                container_id: None,
            },
            ..Default::default()
        }
    }

    fn view(containers: Vec<ContainerView>) -> PodView {
        PodView {
            containers,
            initialized: true,
            sandbox_ready: true,
            qos_class: "BestEffort".into(),
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_kubelet() {
        assert_eq!(phase(&pod("Always"), &view(vec![running()])), "Running");
        assert_eq!(phase(&pod("Never"), &view(vec![exited(0)])), "Succeeded");
        assert_eq!(phase(&pod("Never"), &view(vec![exited(1)])), "Failed");
        assert_eq!(
            phase(&pod("OnFailure"), &view(vec![exited(0)])),
            "Succeeded"
        );
        assert_eq!(phase(&pod("Always"), &view(vec![exited(0)])), "Running");
        assert_eq!(
            phase(&pod("Always"), &view(vec![ContainerView::default()])),
            "Pending"
        );
        let mut crashing = ContainerView {
            state: ViewState::WaitingFor {
                reason: "CrashLoopBackOff".into(),
                message: String::new(),
            },
            ..Default::default()
        };
        crashing.last_state = Some(exited(1).state);
        assert_eq!(phase(&pod("Always"), &view(vec![crashing])), "Running");
        let mut v = view(vec![running()]);
        v.initialized = false;
        assert_eq!(phase(&pod("Always"), &v), "Pending");
    }

    #[test]
    fn readiness_gates_hold_the_pod_back() {
        let mut p = pod("Always");
        if let Some(spec) = p.spec.as_mut() {
            spec.readiness_gates = Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
                condition_type: "example.com/lb".into(),
            }]);
        }
        let ready = |p: &Pod| {
            build(p, &view(vec![running()]))
                .conditions
                .expect("conditions")
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .expect("Ready")
        };
        let gated = ready(&p);
        assert_eq!(gated.status, "False");
        assert_eq!(gated.reason.as_deref(), Some("ReadinessGatesNotReady"));
        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "example.com/lb".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(ready(&p).status, "True");
        let status = build(&p, &view(vec![running()]));
        assert!(
            status
                .conditions
                .expect("conditions")
                .iter()
                .any(|c| c.type_ == "example.com/lb"),
            "another writer's condition is kept"
        );
    }

    #[test]
    fn ready_conditions_and_ips() {
        let mut v = view(vec![running()]);
        v.pod_ip = Some("10.244.0.5".into());
        let status = build(&pod("Always"), &v);
        let cond = |t: &str| {
            status
                .conditions
                .as_ref()
                .and_then(|c| c.iter().find(|c| c.type_ == t))
                .map(|c| c.status.clone())
        };
        assert_eq!(cond("Ready").as_deref(), Some("True"));
        assert_eq!(cond("ContainersReady").as_deref(), Some("True"));
        assert_eq!(cond("Initialized").as_deref(), Some("True"));
        assert_eq!(cond("PodReadyToStartContainers").as_deref(), Some("True"));
        assert_eq!(status.pod_ips.expect("podIPs")[0].ip, "10.244.0.5");
        let mut v = view(vec![ContainerView {
            ready: false,
            ..running()
        }]);
        v.pod_ip = None;
        let status = build(&pod("Always"), &v);
        let ready = status
            .conditions
            .expect("conditions")
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [app]")
        );
    }
}
