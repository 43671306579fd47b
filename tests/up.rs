//! `windlass up` and `windlass reset` (issue 8), as a new user meets them, in a node network
//! namespace with its own cgroup root and BPF pin directory: one command gives a Ready node,
//! the README's walk (a Deployment, `kubectl expose`, a client pod fetching `http://web` by
//! its DNS name) works, Ctrl-C leaves the pods running, a second `up` re-adopts them (same
//! PIDs), and `windlass reset` removes everything the node set up, twice in a row.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use windlass_tests::apiserver::windlass_bin;
use windlass_tests::bpffs::PinDir;
use windlass_tests::topology::{Node, Topology};
use windlass_tests::{prefix, prereq, proxy};

const PATIENCE: Duration = Duration::from_secs(90);

/// A `windlass up` in a node namespace; on drop (also after a panic) it is killed and what it
/// made is removed, whether or not `windlass reset` worked.
struct Up {
    child: Option<Child>,
    node: PathBuf,
    node_name: String,
    data: tempfile::TempDir,
    cgroup_root: String,
    pins: PinDir,
    log: PathBuf,
}

impl Up {
    fn new(node: &Node) -> Up {
        let prefix = prefix::unique();
        let data = tempfile::Builder::new()
            .prefix(&format!("{prefix}-up"))
            .tempdir()
            .expect("data dir");
        let log = data.path().with_extension("log");
        Up {
            child: None,
            node: node.ns.path().to_path_buf(),
            node_name: node.ns.name().to_string(),
            cgroup_root: format!("/{prefix}"),
            pins: PinDir::create(&format!("{prefix}-bpf")).expect("pin dir"),
            data,
            log,
        }
    }

    fn dir(&self) -> &Path {
        self.data.path()
    }

    /// The agent flags that keep this node apart from the host's.
    fn node_flags(&self) -> Vec<String> {
        vec![
            "--node-name".into(),
            self.node_name.clone(),
            "--cgroup-root".into(),
            self.cgroup_root.clone(),
            "--bpf-root".into(),
            self.pins.path().display().to_string(),
        ]
    }

    /// Runs `windlass args...` in the node namespace to completion.
    fn windlass(&self, args: &[String]) -> Output {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.node.display()))
            .arg(windlass_bin())
            .args(args);
        command.output().expect("run windlass")
    }

    /// Starts `windlass up [up_flags]` and returns the lines it printed up to the KUBECONFIG
    /// hint.
    fn start(&mut self, up_flags: &[&str]) -> Vec<String> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut args: Vec<String> = vec![
            "up".into(),
            "--data-dir".into(),
            self.dir().display().to_string(),
        ];
        args.extend(up_flags.iter().map(|f| f.to_string()));
        args.extend([
            "--".into(),
            "--pod-log-dir".into(),
            self.dir().join("logs").display().to_string(),
        ]);
        args.extend(self.node_flags());
        let _ = nix::sys::prctl::set_child_subreaper(true);
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.node.display()))
            .arg(windlass_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start windlass up");
        let stdout = child.stdout.take().expect("stdout");
        self.child = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut printed = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while !printed
            .iter()
            .any(|l: &String| l.contains("export KUBECONFIG="))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => printed.push(line),
                Err(_) => panic!(
                    "windlass up printed no KUBECONFIG hint within {PATIENCE:?}: {printed:?}\n{}",
                    self.log_text()
                ),
            }
        }
        printed
    }

    /// Ctrl-C: SIGINT, then the exit status.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // nsenter execs windlass, so the child is windlass itself.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "windlass up ignored Ctrl-C for 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kubectl args...` in the node namespace with the printed KUBECONFIG.
    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let kubectl = prereq::kubectls().remove(0);
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.node.display()))
            .arg(&kubectl)
            .env("KUBECONFIG", self.dir().join("admin.kubeconfig"))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)?).map_err(|e| e.to_string())
    }

    /// The running containers as runc sees them: (id, pid).
    fn containers(&self) -> Vec<(String, i64)> {
        if !self.dir().join("runc").is_dir() {
            // (`runc list` would create its root.)
            return Vec::new();
        }
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.dir().join("runc"))
            .args(["list", "--format", "json"])
            .output()
            .expect("runc list");
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut found: Vec<(String, i64)> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["status"] == "running")
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or("").to_string(),
                    c["pid"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        found.sort();
        found
    }

    /// The kubepods cgroups of this node, in every hierarchy.
    fn cgroups(&self) -> Vec<PathBuf> {
        let relative = format!("{}/kubepods", self.cgroup_root.trim_start_matches('/'));
        std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|h| h.path().join(&relative))
            .chain(std::iter::once(Path::new("/sys/fs/cgroup").join(&relative)))
            .filter(|p| p.is_dir())
            .collect()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- windlass up log ---\n{}", self.log_text());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        windlass_tests::agent::remove_node_state(self.dir(), &self.cgroup_root);
        let _ = std::fs::remove_file(&self.log);
    }
}

fn until<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {PATIENCE:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// The web pods' container ids, from their status.
fn web_container_ids(up: &Up) -> Vec<String> {
    let pods = up.json(&["get", "pods", "-l", "app=web"]).expect("pods");
    let ids: Vec<String> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["status"]["containerStatuses"][0]["containerID"].as_str())
        .map(|id| id.rsplit("://").next().unwrap_or(id).to_string())
        .collect();
    assert_eq!(ids.len(), 3, "three web pods with a container: {pods}");
    ids
}

/// Those of `ids` that runc runs: (id, pid).
fn running(up: &Up, ids: &[String]) -> Vec<(String, i64)> {
    up.containers()
        .into_iter()
        .filter(|(id, _)| ids.contains(id))
        .collect()
}

/// `iptables -t nat -S` in the node's namespace.
fn ip_tables(node: &Path) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", node.display()))
        .args(["iptables", "-w", "-t", "nat", "-S"])
        .output()
        .expect("iptables");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ready_web_pods(up: &Up) -> Result<Vec<String>, String> {
    let pods = up.json(&["get", "pods", "-l", "app=web"])?;
    let ready: Vec<String> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    if ready.len() == 3 {
        Ok(ready)
    } else {
        Err(format!("{pods}"))
    }
}

#[test]
fn up_runs_the_readme_walk_survives_ctrl_c_and_reset_removes_everything() {
    prereq::require_root();
    prereq::require_tool("nsenter");
    prereq::require_tool("runc");
    let busybox = proxy::test_image("busybox");
    let topology = Topology::builder().nodes(1).build().expect("topology");
    let node = topology.node(0);
    let mut up = Up::new(node);
    let import = up.windlass(&[
        "image".into(),
        "import".into(),
        "--data-dir".into(),
        up.dir().display().to_string(),
        busybox.display().to_string(),
    ]);
    assert!(import.status.success(), "import busybox: {import:?}");

    // One command; it says where the kubeconfig is and what to type.
    let printed = up.start(&[]);
    let kubeconfig = up.dir().join("admin.kubeconfig");
    assert!(
        printed.iter().any(|l| l.contains(&format!(
            "export KUBECONFIG={}; kubectl get nodes",
            kubeconfig.display()
        ))),
        "the hint names the kubeconfig: {printed:?}"
    );
    until("the node to be Ready", || {
        let node = up.json(&["get", "node", &up.node_name])?;
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then_some(()).ok_or_else(|| node.to_string())
    });

    // The README's walk: busybox httpd serving /etc, so /hostname names the pod that answered.
    up.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=windlass.local/busybox:latest",
        "--replicas=3",
        "--",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/etc",
    ])
    .expect("create deployment");
    up.kubectl(&[
        "expose",
        "deployment",
        "web",
        "--port",
        "80",
        "--target-port",
        "8080",
    ])
    .expect("expose");
    let web = until("3 ready web pods", || ready_web_pods(&up));
    up.kubectl(&[
        "run",
        "client",
        "--image=windlass.local/busybox:latest",
        "--restart=Never",
        "--",
        "wget",
        "-qO-",
        "http://web/hostname",
    ])
    .expect("run client");
    let page = until("the client pod to succeed", || {
        let pod = up.json(&["get", "pod", "client"])?;
        match pod["status"]["phase"].as_str() {
            Some("Succeeded") => up.kubectl(&["logs", "client"]),
            Some("Failed") => panic!("client failed: {:?}", up.kubectl(&["logs", "client"])),
            other => Err(format!("phase {other:?}")),
        }
    });
    assert!(
        web.iter().any(|name| page.trim() == name),
        "the page names one of the web pods {web:?}: {page:?}"
    );

    // Ctrl-C: the cluster stops, the pods keep running.
    let ids = web_container_ids(&up);
    let before = running(&up, &ids);
    assert_eq!(before.len(), 3, "three web containers run: {before:?}");
    let status = up.interrupt();
    assert!(
        status.success(),
        "windlass up exits cleanly on Ctrl-C: {status}"
    );
    assert_eq!(
        running(&up, &ids),
        before,
        "the pods keep running without windlass up"
    );

    // A second `up` re-adopts them: same containers, same PIDs, no restarts.
    up.start(&[]);
    until("the web pods to be Ready again", || ready_web_pods(&up));
    assert_eq!(running(&up, &ids), before, "re-adopted, not restarted");
    assert_eq!(
        web_container_ids(&up),
        ids,
        "the pods show the same containers"
    );
    let pods = up.json(&["get", "pods", "-l", "app=web"]).expect("pods");
    for pod in pods["items"].as_array().into_iter().flatten() {
        assert_eq!(
            pod["status"]["containerStatuses"][0]["restartCount"], 0,
            "no restart: {pod}"
        );
    }

    // kubectl delete cleans up.
    up.kubectl(&["delete", "deployment", "web"])
        .expect("delete deployment");
    up.kubectl(&["delete", "pod", "client"])
        .expect("delete client");
    until("the pods and their containers to be gone", || {
        let left = up.containers();
        let pods = up.json(&["get", "pods"])?;
        let none = pods["items"].as_array().is_none_or(|a| a.is_empty());
        (left.is_empty() && none)
            .then_some(())
            .ok_or_else(|| format!("{left:?} {pods}"))
    });

    assert!(
        ip_tables(&up.node).contains("WINDLASS"),
        "while the node runs, its pods' traffic out of the cluster is masqueraded"
    );

    // With --stop-pods, Ctrl-C also stops the pods.
    assert!(up.interrupt().success());
    up.start(&["--stop-pods"]);
    up.kubectl(&[
        "run",
        "stopped",
        "--image=windlass.local/busybox:latest",
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ])
    .expect("run a pod");
    until("the pod to run", || {
        (up.containers().len() == 1)
            .then_some(())
            .ok_or_else(|| format!("{:?}", up.containers()))
    });
    assert!(
        up.interrupt().success(),
        "windlass up --stop-pods exits cleanly"
    );
    assert!(
        up.containers().is_empty(),
        "--stop-pods stopped the pod: {:?}",
        up.containers()
    );

    // Leave one pod running for reset to remove.
    up.start(&[]);
    up.kubectl(&["delete", "pod", "stopped", "--wait=false"])
        .expect("delete the stopped pod");
    until("the stopped pod to be gone", || {
        let pods = up.json(&["get", "pods"])?;
        let none = pods["items"].as_array().is_none_or(|a| a.is_empty());
        (none && up.containers().is_empty())
            .then_some(())
            .ok_or_else(|| pods.to_string())
    });
    up.kubectl(&[
        "run",
        "left",
        "--image=windlass.local/busybox:latest",
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ])
    .expect("run a pod");
    until("the left-over pod to run", || {
        (up.containers().len() == 1)
            .then_some(())
            .ok_or_else(|| format!("{:?}", up.containers()))
    });
    assert!(up.interrupt().success());

    // reset removes everything the node set up, and can run again.
    let mut reset: Vec<String> = vec![
        "reset".into(),
        "--data-dir".into(),
        up.dir().display().to_string(),
    ];
    reset.extend(up.node_flags());
    for round in 1..=2 {
        let out = up.windlass(&reset);
        assert!(
            out.status.success(),
            "reset (round {round}) succeeds: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(up.containers().is_empty(), "no container is left");
        assert!(
            up.cgroups().is_empty(),
            "no kubepods cgroup is left: {:?}",
            up.cgroups()
        );
        let pins = up.pins.path().join(&up.node_name);
        assert!(
            !pins.exists(),
            "the BPF pins and links are gone: {}",
            pins.display()
        );
        let ip = |args: &[&str]| {
            let out = Command::new("nsenter")
                .arg(format!("--net={}", up.node.display()))
                .arg("ip")
                .args(args)
                .output()
                .expect("ip");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(
            !ip(&["-o", "link"]).contains("wl0"),
            "the pod bridge is gone"
        );
        let routes = ip(&["route", "show", "table", "all"]);
        assert!(
            !routes.contains("10.96.0.0/16") && !routes.contains("10.244."),
            "the service and pod routes are gone:\n{routes}"
        );
        let nat = ip_tables(&up.node);
        assert!(
            !nat.contains("WINDLASS"),
            "the masquerade chain and its jump are gone:\n{nat}"
        );
        let left: Vec<String> = std::fs::read_dir(up.dir())
            .expect("data dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["images".to_string()], "only the images stay");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        assert!(
            !mounts.contains(&up.dir().display().to_string()),
            "nothing stays mounted under the data dir"
        );
    }
}
