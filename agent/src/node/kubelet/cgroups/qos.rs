//! Kubelet's QoS math, without touching a cgroup: the pod's QoS class
//! (`pkg/apis/core/v1/helper/qos`), the per-container CPU, memory and OOM settings
//! (`pkg/kubelet/kuberuntime/kuberuntime_container_linux.go`, `pkg/kubelet/qos/policy.go`), the
//! pod-level cgroup settings (`pkg/kubelet/cm/helpers_linux.go` `ResourceConfigForPod`). Quantities
//! are read with [`crate::node::kubelet::quantity`].
//!
//! Only container-level resources are read; pod-level `spec.resources` (the PodLevelResources
//! feature) is not supported yet.

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::node::kubelet::quantity::Quantity as Parsed;
pub use crate::node::kubelet::quantity::QuantityError;

/// The smallest `cpu.shares` the kernel accepts and kubelet writes (`MinShares`).
pub const MIN_SHARES: u64 = 2;
/// The largest `cpu.shares` kubelet writes (`MaxShares`).
pub const MAX_SHARES: u64 = 262_144;
/// `cpu.shares` of one whole CPU.
pub const SHARES_PER_CPU: u64 = 1024;
/// The CFS period kubelet uses, in microseconds (`--cpu-cfs-quota-period` default 100 ms).
pub const QUOTA_PERIOD: u64 = 100_000;
/// The smallest CFS quota kubelet writes, in microseconds (`MinQuotaPeriod`).
pub const MIN_QUOTA: i64 = 1_000;
/// `oom_score_adj` of Guaranteed (and node-critical) containers.
pub const GUARANTEED_OOM_SCORE_ADJ: i32 = -997;
/// `oom_score_adj` of BestEffort containers.
pub const BEST_EFFORT_OOM_SCORE_ADJ: i32 = 1000;

/// A pod's quality-of-service class, as kubelet computes it and reports in `status.qosClass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QosClass {
    /// Every container has CPU and memory limits equal to its requests.
    Guaranteed,
    /// Some container has a request or limit, but the pod is not Guaranteed.
    Burstable,
    /// No container has any CPU or memory request or limit.
    BestEffort,
}

impl QosClass {
    /// The `status.qosClass` string: `Guaranteed`, `Burstable` or `BestEffort`.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// The pod's class as kubelet's `ComputePodQOS` computes it: app and init containers
    /// count, only `cpu` and `memory` matter, a missing request defaults to the limit, and a pod
    /// is Guaranteed only when every container has positive CPU and memory limits and the pod's
    /// summed requests equal its summed limits.
    pub fn from_pod(pod: &Pod) -> Result<Self, QuantityError> {
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(QosClass::BestEffort);
        };
        let mut requests = ResourceList::default();
        let mut limits = ResourceList::default();
        let mut guaranteed = true;
        let containers = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        for container in containers {
            let res = ContainerValues::of(container)?;
            // Only positive quantities count, as in kubelet (`quantity.Cmp(zero) == 1`).
            requests.add(&res.requests.positive());
            let found = res.limits.positive();
            limits.add(&found);
            if found.cpu.is_none() || found.memory.is_none() {
                guaranteed = false;
            }
        }
        if requests.is_empty() && limits.is_empty() {
            return Ok(QosClass::BestEffort);
        }
        let matches = |req: Option<i64>, lim: Option<i64>| req.is_none_or(|r| lim == Some(r));
        if guaranteed
            && matches(requests.cpu, limits.cpu)
            && matches(requests.memory, limits.memory)
            && requests.len() == limits.len()
        {
            return Ok(QosClass::Guaranteed);
        }
        Ok(QosClass::Burstable)
    }
}

impl std::fmt::Display for QosClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QosClass {
    type Err = String;

    /// Parses a `status.qosClass` string.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Guaranteed" => Ok(QosClass::Guaranteed),
            "Burstable" => Ok(QosClass::Burstable),
            "BestEffort" => Ok(QosClass::BestEffort),
            other => Err(format!("unknown QoS class {other:?}")),
        }
    }
}

/// `cpu.shares` for a CPU amount in millicores (`MilliCPUToShares`): 1024 per CPU, at least
/// [`MIN_SHARES`], at most [`MAX_SHARES`].
pub fn milli_cpu_to_shares(milli_cpu: i64) -> u64 {
    if milli_cpu <= 0 {
        return MIN_SHARES;
    }
    let shares = (milli_cpu as u128 * SHARES_PER_CPU as u128 / 1000) as u64;
    shares.clamp(MIN_SHARES, MAX_SHARES)
}

/// The CFS quota in microseconds for a CPU limit in millicores over `period` microseconds
/// (`milliCPUToQuota`): `None` when there is no limit, otherwise at least [`MIN_QUOTA`].
pub fn milli_cpu_to_quota(milli_cpu: i64, period: u64) -> Option<i64> {
    if milli_cpu <= 0 {
        return None;
    }
    let quota = milli_cpu as i128 * period as i128 / 1000;
    Some(i64::try_from(quota).unwrap_or(i64::MAX).max(MIN_QUOTA))
}

/// The cgroup and OOM settings of one container, as kubelet hands them to the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerResources {
    /// `cpu.shares`, from the CPU request (or the limit when there is no request).
    pub cpu_shares: u64,
    /// The CFS quota in microseconds; `None` when the container has no CPU limit.
    pub cpu_quota: Option<i64>,
    /// The CFS period in microseconds ([`QUOTA_PERIOD`]).
    pub cpu_period: u64,
    /// The memory limit in bytes; `None` when the container has no memory limit.
    pub memory_limit: Option<i64>,
    /// The `oom_score_adj` of the container's processes (OCI `process.oomScoreAdj`).
    pub oom_score_adj: i32,
}

impl ContainerResources {
    /// The settings of `container` in a pod of class `qos` on a node with `memory_capacity`
    /// bytes of memory (`calculateLinuxResources` and `GetContainerOOMScoreAdjust`). A capacity
    /// of 0 or less is taken as unknown, which gives Burstable containers 999.
    pub fn for_container(
        container: &Container,
        qos: QosClass,
        memory_capacity: i64,
    ) -> Result<Self, QuantityError> {
        let values = ContainerValues::of(container)?;
        let memory_request = values.requests.memory.unwrap_or(0);
        Ok(Self::from_values(
            &values,
            qos,
            memory_request,
            memory_capacity,
        ))
    }

    /// Like [`ContainerResources::for_container`], with the rules that need the whole pod: the
    /// pod's class is computed, node-critical pods (priority class `system-node-critical`) get
    /// the Guaranteed score, and a sidecar (an init container with `restartPolicy: Always`)
    /// scores as if it requested at least the smallest memory request of the app containers.
    pub fn for_pod_container(
        pod: &Pod,
        container: &Container,
        memory_capacity: i64,
    ) -> Result<Self, QuantityError> {
        let qos = QosClass::from_pod(pod)?;
        let values = ContainerValues::of(container)?;
        let mut memory_request = values.requests.memory.unwrap_or(0);
        let spec = pod.spec.as_ref();
        if let Some(spec) = spec
            && is_sidecar(container)
        {
            let mut smallest: Option<i64> = None;
            for app in &spec.containers {
                let request = ContainerValues::of(app)?.requests.memory.unwrap_or(0);
                if request > 0 {
                    smallest = Some(smallest.map_or(request, |s| s.min(request)));
                }
            }
            if let Some(smallest) = smallest {
                memory_request = memory_request.max(smallest);
            }
        }
        let mut resources = Self::from_values(&values, qos, memory_request, memory_capacity);
        if spec.is_some_and(|s| s.priority_class_name.as_deref() == Some("system-node-critical")) {
            resources.oom_score_adj = GUARANTEED_OOM_SCORE_ADJ;
        }
        Ok(resources)
    }

    fn from_values(
        values: &ContainerValues,
        qos: QosClass,
        memory_request: i64,
        memory_capacity: i64,
    ) -> Self {
        ContainerResources {
            // A missing request already defaulted to the limit in `ContainerValues::of`.
            cpu_shares: milli_cpu_to_shares(values.requests.cpu.unwrap_or(0)),
            cpu_quota: milli_cpu_to_quota(values.limits.cpu.unwrap_or(0), QUOTA_PERIOD),
            cpu_period: QUOTA_PERIOD,
            memory_limit: values.limits.memory.filter(|m| *m > 0),
            oom_score_adj: oom_score_adj(qos, memory_request, memory_capacity),
        }
    }
}

/// The `oom_score_adj` for a container of a pod of class `qos` (`GetContainerOOMScoreAdjust`):
/// Guaranteed -997, BestEffort 1000, Burstable `1000 - 1000 * request / capacity` kept between
/// 3 (`1000 + GUARANTEED_OOM_SCORE_ADJ`, what kubelet's code does; its docs say 2) and 999.
pub fn oom_score_adj(qos: QosClass, memory_request: i64, memory_capacity: i64) -> i32 {
    match qos {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            let adj = if memory_capacity > 0 {
                1000 - (1000 * memory_request.max(0) as i128) / memory_capacity as i128
            } else {
                1000
            };
            let floor = (1000 + GUARANTEED_OOM_SCORE_ADJ) as i128;
            if adj < floor {
                floor as i32
            } else if adj >= BEST_EFFORT_OOM_SCORE_ADJ as i128 {
                BEST_EFFORT_OOM_SCORE_ADJ - 1
            } else {
                adj as i32
            }
        }
    }
}

/// The settings of a pod's own cgroup (`pod<uid>`), as kubelet's `ResourceConfigForPod`
/// computes them with CFS quota enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodResources {
    /// `cpu.shares` from the pod's CPU requests ([`MIN_SHARES`] for BestEffort).
    pub cpu_shares: u64,
    /// The CFS quota in microseconds, when the pod is Guaranteed or every container sets a CPU
    /// limit.
    pub cpu_quota: Option<i64>,
    /// The CFS period in microseconds, set together with `cpu_quota`.
    pub cpu_period: Option<u64>,
    /// The memory limit in bytes, when the pod is Guaranteed or every container sets a memory
    /// limit.
    pub memory_limit: Option<i64>,
    /// The `pids.max` of the pod (kubelet's `--pod-max-pids`); `None` for no limit.
    pub pids_limit: Option<i64>,
}

impl PodResources {
    /// The pod cgroup's settings for `pod`, with `pids_limit` from the agent's configuration.
    /// Requests and limits are summed over app containers and sidecars, and an ordinary init
    /// container counts when it needs more than that (kubelet's `PodRequests` / `PodLimits`);
    /// `spec.overhead` is added to requests and to the limits that are set.
    pub fn for_pod(pod: &Pod, pids_limit: Option<i64>) -> Result<Self, QuantityError> {
        let qos = QosClass::from_pod(pod)?;
        let pids_limit = pids_limit.filter(|p| *p > 0);
        if qos == QosClass::BestEffort {
            return Ok(PodResources {
                cpu_shares: MIN_SHARES,
                cpu_quota: None,
                cpu_period: None,
                memory_limit: None,
                pids_limit,
            });
        }
        let Some(spec) = pod.spec.as_ref() else {
            return Err(QuantityError {
                value: String::new(),
                reason: "pod has no spec",
            });
        };
        let mut cpu_limits_declared = true;
        let mut memory_limits_declared = true;
        let mut declared = |limits: &ResourceList| {
            if limits.cpu.unwrap_or(0) == 0 {
                cpu_limits_declared = false;
            }
            if limits.memory.unwrap_or(0) == 0 {
                memory_limits_declared = false;
            }
        };

        let mut requests = ResourceList::default();
        let mut limits = ResourceList::default();
        for container in &spec.containers {
            let values = ContainerValues::of(container)?;
            requests.add(&values.requests);
            declared(&values.limits);
            limits.add(&values.limits);
        }
        let mut sidecar_requests = ResourceList::default();
        let mut sidecar_limits = ResourceList::default();
        let mut init_requests = ResourceList::default();
        let mut init_limits = ResourceList::default();
        for container in spec.init_containers.iter().flatten() {
            let values = ContainerValues::of(container)?;
            let (reqs, lims) = if is_sidecar(container) {
                requests.add(&values.requests);
                limits.add(&values.limits);
                sidecar_requests.add(&values.requests);
                sidecar_limits.add(&values.limits);
                (sidecar_requests, sidecar_limits)
            } else {
                let mut reqs = values.requests;
                reqs.add(&sidecar_requests);
                let mut lims = values.limits;
                lims.add(&sidecar_limits);
                (reqs, lims)
            };
            declared(&lims);
            init_requests.max(&reqs);
            init_limits.max(&lims);
        }
        requests.max(&init_requests);
        limits.max(&init_limits);
        if let Some(overhead) = spec.overhead.as_ref() {
            let overhead = ResourceList::from_map(Some(overhead))?;
            requests.add(&overhead);
            limits.cpu = limits
                .cpu
                .map(|l| l.saturating_add(overhead.cpu.unwrap_or(0)));
            limits.memory = limits
                .memory
                .map(|l| l.saturating_add(overhead.memory.unwrap_or(0)));
        }

        let cpu_shares = milli_cpu_to_shares(requests.cpu.unwrap_or(0));
        let cpu_quota = milli_cpu_to_quota(limits.cpu.unwrap_or(0), QUOTA_PERIOD);
        let memory_limit = limits.memory.filter(|m| *m > 0);
        let (with_cpu, with_memory) = match qos {
            QosClass::Guaranteed => (true, true),
            _ => (cpu_limits_declared, memory_limits_declared),
        };
        Ok(PodResources {
            cpu_shares,
            cpu_quota: cpu_quota.filter(|_| with_cpu),
            cpu_period: with_cpu.then_some(QUOTA_PERIOD),
            memory_limit: memory_limit.filter(|_| with_memory),
            pids_limit,
        })
    }

    /// Settings that limit nothing: shares [`MIN_SHARES`], no quota, memory or pids limit.
    pub fn unlimited() -> Self {
        PodResources {
            cpu_shares: MIN_SHARES,
            cpu_quota: None,
            cpu_period: None,
            memory_limit: None,
            pids_limit: None,
        }
    }
}

fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

/// CPU in millicores and memory in bytes; `None` when the resource is not named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ResourceList {
    cpu: Option<i64>,
    memory: Option<i64>,
}

impl ResourceList {
    fn from_map(
        map: Option<&std::collections::BTreeMap<String, Quantity>>,
    ) -> Result<Self, QuantityError> {
        let Some(map) = map else {
            return Ok(ResourceList::default());
        };
        Ok(ResourceList {
            cpu: map.get("cpu").map(|q| milli_value(&q.0)).transpose()?,
            memory: map.get("memory").map(|q| value(&q.0)).transpose()?,
        })
    }

    fn positive(&self) -> Self {
        ResourceList {
            cpu: self.cpu.filter(|v| *v > 0),
            memory: self.memory.filter(|v| *v > 0),
        }
    }

    /// `addResourceList`: adds every named resource, naming it here too.
    fn add(&mut self, other: &Self) {
        let sum = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            (a, None) => a,
            (None, b) => b,
        };
        self.cpu = sum(self.cpu, other.cpu);
        self.memory = sum(self.memory, other.memory);
    }

    /// `maxResourceList`: takes each named resource that is missing here or larger.
    fn max(&mut self, other: &Self) {
        let max = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, None) => a,
            (None, b) => b,
        };
        self.cpu = max(self.cpu, other.cpu);
        self.memory = max(self.memory, other.memory);
    }

    fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }

    fn len(&self) -> usize {
        usize::from(self.cpu.is_some()) + usize::from(self.memory.is_some())
    }
}

/// A container's requests and limits, requests defaulted to limits as the API server does.
#[derive(Debug, Clone, Copy, Default)]
struct ContainerValues {
    requests: ResourceList,
    limits: ResourceList,
}

impl ContainerValues {
    fn of(container: &Container) -> Result<Self, QuantityError> {
        let resources = container.resources.as_ref();
        let limits = ResourceList::from_map(resources.and_then(|r| r.limits.as_ref()))?;
        let mut requests = ResourceList::from_map(resources.and_then(|r| r.requests.as_ref()))?;
        requests.cpu = requests.cpu.or(limits.cpu);
        requests.memory = requests.memory.or(limits.memory);
        Ok(ContainerValues { requests, limits })
    }
}

/// The quantity `text` in thousandths, rounded up (`Quantity.MilliValue`): CPU in millicores,
/// so `"100m"` → 100, `"0.5"` → 500, `"2"` → 2000.
pub fn milli_value(text: &str) -> Result<i64, QuantityError> {
    let q = Parsed::parse(text)?;
    i64::try_from(q.milli_value()).map_err(|_| QuantityError {
        value: text.to_string(),
        reason: "out of range",
    })
}

/// The quantity `text` in units, rounded up (`Quantity.Value`): memory in bytes, so `"64Mi"` →
/// 67108864, `"1G"` → 1000000000, `"129e6"` → 129000000.
pub fn value(text: &str) -> Result<i64, QuantityError> {
    let q = Parsed::parse(text)?;
    i64::try_from(q.value()).map_err(|_| QuantityError {
        value: text.to_string(),
        reason: "out of range",
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    use super::*;

    fn list(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
        (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect()
        })
    }

    fn container(name: &str, requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        Container {
            name: name.into(),
            resources: Some(ResourceRequirements {
                requests: list(requests),
                limits: list(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                init_containers: (!init.is_empty()).then_some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const GI: i64 = 1 << 30;
    const MI: i64 = 1 << 20;

    #[test]
    fn cpu_quantities() {
        for (text, milli) in [
            ("100m", 100),
            ("0.5", 500),
            ("2", 2000),
            ("1.5", 1500),
            (".25", 250),
            ("250m", 250),
            ("0.0001", 1),
            ("1e3", 1_000_000),
            ("+3", 3000),
            ("0", 0),
            ("100000u", 100),
            ("1k", 1_000_000),
        ] {
            assert_eq!(milli_value(text), Ok(milli), "{text}");
        }
    }

    #[test]
    fn memory_quantities() {
        for (text, bytes) in [
            ("64Mi", 64 * MI),
            ("1G", 1_000_000_000),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129E6", 129_000_000),
            ("123Mi", 128_974_848),
            ("1.5Gi", 1_610_612_736),
            ("1Ki", 1024),
            ("128974848000m", 128_974_848),
            ("1m", 1),
            ("1e-3", 1),
        ] {
            assert_eq!(value(text), Ok(bytes), "{text}");
        }
        assert!(
            value("-1Ki").is_err(),
            "requests and limits are never negative"
        );
        assert_eq!(value("7Ei"), Ok(7 << 60));
    }

    #[test]
    fn bad_quantities_are_errors() {
        for text in [
            "", " ", "abc", "1.2.3", "10Q", "1K", "1e", "1e+", "e3", "1Mii", "--1", "1 Gi", "1.5x",
            "8Ei", "1e99", ".", "1e3m",
        ] {
            let err = value(text).expect_err(text);
            assert_eq!(err.value, text);
            assert!(err.to_string().starts_with("invalid quantity"), "{err}");
        }
    }

    #[test]
    fn qos_classes() {
        let both = [("cpu", "100m"), ("memory", "100Mi")];
        let cases = [
            (
                pod(vec![container("a", &[], &[])], vec![]),
                QosClass::BestEffort,
            ),
            (
                pod(vec![container("a", &both, &both)], vec![]),
                QosClass::Guaranteed,
            ),
            // Requests default to limits.
            (
                pod(vec![container("a", &[], &both)], vec![]),
                QosClass::Guaranteed,
            ),
            (
                pod(vec![container("a", &[("cpu", "50m")], &both)], vec![]),
                QosClass::Burstable,
            ),
            (
                pod(vec![container("a", &[("memory", "1Gi")], &[])], vec![]),
                QosClass::Burstable,
            ),
            // Every container needs both limits.
            (
                pod(
                    vec![container("a", &both, &both), container("b", &[], &[])],
                    vec![],
                ),
                QosClass::Burstable,
            ),
            (
                pod(
                    vec![container("a", &both, &both)],
                    vec![container("init", &[], &[])],
                ),
                QosClass::Burstable,
            ),
            (
                pod(
                    vec![container("a", &[], &[])],
                    vec![container("init", &[("cpu", "1")], &[])],
                ),
                QosClass::Burstable,
            ),
            (
                pod(
                    vec![container("a", &both, &both)],
                    vec![container("init", &both, &both)],
                ),
                QosClass::Guaranteed,
            ),
            // A limit on something else does not count.
            (
                pod(
                    vec![container("a", &[], &[("ephemeral-storage", "1Gi")])],
                    vec![],
                ),
                QosClass::BestEffort,
            ),
            // Only cpu limits: not Guaranteed.
            (
                pod(vec![container("a", &[], &[("cpu", "1")])], vec![]),
                QosClass::Burstable,
            ),
            // Zero requests do not count.
            (
                pod(vec![container("a", &[("cpu", "0")], &[])], vec![]),
                QosClass::BestEffort,
            ),
            (Pod::default(), QosClass::BestEffort),
        ];
        for (i, (pod, want)) in cases.iter().enumerate() {
            assert_eq!(QosClass::from_pod(pod), Ok(*want), "case {i}");
        }
        let bad = pod(vec![container("a", &[("cpu", "lots")], &[])], vec![]);
        assert!(QosClass::from_pod(&bad).is_err());
    }

    #[test]
    fn qos_strings() {
        for q in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            assert_eq!(q.as_str().parse::<QosClass>(), Ok(q));
            assert_eq!(q.to_string(), q.as_str());
        }
        assert_eq!(QosClass::BestEffort.as_str(), "BestEffort");
        assert!("burstable".parse::<QosClass>().is_err());
    }

    #[test]
    fn shares_and_quota() {
        assert_eq!(milli_cpu_to_shares(100), 102);
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_shares(0), 2);
        assert_eq!(milli_cpu_to_shares(1), 2);
        assert_eq!(milli_cpu_to_shares(1_000_000), MAX_SHARES);
        assert_eq!(milli_cpu_to_quota(250, QUOTA_PERIOD), Some(25_000));
        assert_eq!(milli_cpu_to_quota(1, QUOTA_PERIOD), Some(1_000));
        assert_eq!(milli_cpu_to_quota(0, QUOTA_PERIOD), None);
        assert_eq!(milli_cpu_to_quota(2000, QUOTA_PERIOD), Some(200_000));
    }

    #[test]
    fn oom_score_adjustments() {
        assert_eq!(oom_score_adj(QosClass::Burstable, GI, 10 * GI), 900);
        assert_eq!(oom_score_adj(QosClass::Burstable, 0, 10 * GI), 999);
        assert_eq!(oom_score_adj(QosClass::Burstable, 10 * GI, 10 * GI), 3);
        assert_eq!(oom_score_adj(QosClass::Burstable, 20 * GI, 10 * GI), 3);
        assert_eq!(oom_score_adj(QosClass::Burstable, 5 * GI, 10 * GI), 500);
        assert_eq!(oom_score_adj(QosClass::Burstable, GI, 0), 999);
        assert_eq!(oom_score_adj(QosClass::Guaranteed, GI, 10 * GI), -997);
        assert_eq!(oom_score_adj(QosClass::BestEffort, 0, 10 * GI), 1000);
    }

    #[test]
    fn container_resources() {
        let c = container(
            "a",
            &[("cpu", "100m"), ("memory", "1Gi")],
            &[("cpu", "250m"), ("memory", "2Gi")],
        );
        let r = ContainerResources::for_container(&c, QosClass::Burstable, 10 * GI)
            .expect("valid quantities");
        assert_eq!(
            r,
            ContainerResources {
                cpu_shares: 102,
                cpu_quota: Some(25_000),
                cpu_period: 100_000,
                memory_limit: Some(2 * GI),
                oom_score_adj: 900,
            }
        );
        // Limits only: the request defaults to the limit.
        let c = container("a", &[], &[("cpu", "500m"), ("memory", "64Mi")]);
        let r = ContainerResources::for_container(&c, QosClass::Guaranteed, 10 * GI)
            .expect("valid quantities");
        assert_eq!((r.cpu_shares, r.cpu_quota), (512, Some(50_000)));
        assert_eq!((r.memory_limit, r.oom_score_adj), (Some(64 * MI), -997));
        // Nothing set.
        let c = container("a", &[], &[]);
        let r = ContainerResources::for_container(&c, QosClass::BestEffort, 10 * GI)
            .expect("valid quantities");
        assert_eq!(
            r,
            ContainerResources {
                cpu_shares: 2,
                cpu_quota: None,
                cpu_period: 100_000,
                memory_limit: None,
                oom_score_adj: 1000,
            }
        );
    }

    #[test]
    fn pod_container_rules() {
        let mut p = pod(
            vec![
                container("app", &[("memory", "2Gi")], &[]),
                container("small", &[("memory", "1Gi")], &[]),
            ],
            vec![container("sidecar", &[("memory", "100Mi")], &[])],
        );
        let sidecar = {
            let spec = p.spec.as_mut().expect("spec");
            let init = spec.init_containers.as_mut().expect("init");
            init[0].restart_policy = Some("Always".into());
            init[0].clone()
        };
        let r = ContainerResources::for_pod_container(&p, &sidecar, 10 * GI).expect("valid");
        assert_eq!(
            r.oom_score_adj, 900,
            "sidecar scores like the smallest app container"
        );
        if let Some(spec) = p.spec.as_mut() {
            spec.priority_class_name = Some("system-node-critical".into());
        }
        let r = ContainerResources::for_pod_container(&p, &sidecar, 10 * GI).expect("valid");
        assert_eq!(r.oom_score_adj, -997);
    }

    #[test]
    fn pod_resources_guaranteed() {
        let both = [("cpu", "250m"), ("memory", "64Mi")];
        let p = pod(
            vec![container("a", &both, &both), container("b", &both, &both)],
            vec![],
        );
        assert_eq!(
            PodResources::for_pod(&p, Some(1024)),
            Ok(PodResources {
                cpu_shares: 512,
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                memory_limit: Some(128 * MI),
                pids_limit: Some(1024),
            })
        );
    }

    #[test]
    fn pod_resources_burstable() {
        // One container without limits: shares only.
        let p = pod(
            vec![
                container("a", &[("cpu", "100m")], &[("cpu", "1"), ("memory", "1Gi")]),
                container("b", &[("cpu", "200m"), ("memory", "10Mi")], &[]),
            ],
            vec![],
        );
        assert_eq!(
            PodResources::for_pod(&p, None),
            Ok(PodResources {
                cpu_shares: 307,
                cpu_quota: None,
                cpu_period: None,
                memory_limit: None,
                pids_limit: None,
            })
        );
        // Every container has a memory limit but not all a CPU limit.
        let p = pod(
            vec![
                container("a", &[("cpu", "100m")], &[("cpu", "1"), ("memory", "1Gi")]),
                container("b", &[("cpu", "200m")], &[("memory", "10Mi")]),
            ],
            vec![],
        );
        let r = PodResources::for_pod(&p, None).expect("valid");
        assert_eq!((r.cpu_quota, r.cpu_period), (None, None));
        assert_eq!(r.memory_limit, Some(GI + 10 * MI));
        // Every container has both limits.
        let p = pod(
            vec![container(
                "a",
                &[("cpu", "100m"), ("memory", "1Mi")],
                &[("cpu", "1"), ("memory", "1Gi")],
            )],
            vec![],
        );
        let r = PodResources::for_pod(&p, None).expect("valid");
        assert_eq!(r.cpu_shares, 102);
        assert_eq!((r.cpu_quota, r.cpu_period), (Some(100_000), Some(100_000)));
        assert_eq!(r.memory_limit, Some(GI));
    }

    #[test]
    fn pod_resources_init_containers() {
        // The init container needs more than the app containers together: its request wins.
        let p = pod(
            vec![
                container(
                    "a",
                    &[("cpu", "100m")],
                    &[("cpu", "200m"), ("memory", "1Gi")],
                ),
                container(
                    "b",
                    &[("cpu", "100m")],
                    &[("cpu", "200m"), ("memory", "1Gi")],
                ),
            ],
            vec![container(
                "init",
                &[("cpu", "500m")],
                &[("cpu", "1"), ("memory", "1Gi")],
            )],
        );
        let r = PodResources::for_pod(&p, None).expect("valid");
        assert_eq!(r.cpu_shares, 512);
        assert_eq!(r.cpu_quota, Some(100_000));
        assert_eq!(r.memory_limit, Some(2 * GI));
        // An init container without a CPU limit drops the pod's quota.
        let p = pod(
            vec![container(
                "a",
                &[("cpu", "100m")],
                &[("cpu", "1"), ("memory", "1Gi")],
            )],
            vec![container("init", &[("cpu", "50m")], &[("memory", "1Gi")])],
        );
        let r = PodResources::for_pod(&p, None).expect("valid");
        assert_eq!((r.cpu_shares, r.cpu_quota), (102, None));
        assert_eq!(r.memory_limit, Some(GI));
        // A sidecar adds to the app containers.
        let mut sidecar = container("side", &[("cpu", "100m")], &[]);
        sidecar.restart_policy = Some("Always".into());
        let p = pod(vec![container("a", &[("cpu", "100m")], &[])], vec![sidecar]);
        assert_eq!(
            PodResources::for_pod(&p, None).map(|r| r.cpu_shares),
            Ok(204)
        );
    }

    #[test]
    fn pod_resources_best_effort_and_overhead() {
        let p = pod(vec![container("a", &[], &[])], vec![]);
        assert_eq!(
            PodResources::for_pod(&p, Some(0)),
            Ok(PodResources::unlimited())
        );
        let both = [("cpu", "250m"), ("memory", "64Mi")];
        let mut p = pod(vec![container("a", &both, &both)], vec![]);
        if let Some(spec) = p.spec.as_mut() {
            spec.overhead = list(&[("cpu", "250m"), ("memory", "64Mi")]);
        }
        let r = PodResources::for_pod(&p, None).expect("valid");
        assert_eq!((r.cpu_shares, r.cpu_quota), (512, Some(50_000)));
        assert_eq!(r.memory_limit, Some(128 * MI));
    }
}
