//! The `windlass` binary: parses the command line and hands off to the library.

mod cli;

use anyhow::{Context, bail};
use clap::Parser;
use futures::FutureExt as _;
use windlass::control_plane::server::{self, StoreKind};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli::Cli::parse().command {
        cli::Command::Server {
            data_dir,
            listen,
            store,
            etcd_endpoints,
            compaction_interval_seconds,
            cluster_cidr,
            node_monitor_grace_seconds,
            default_toleration_seconds,
            disable_controllers,
        } => {
            let controllers = if disable_controllers {
                None
            } else {
                Some(windlass::control_plane::controllers::ControllerOptions {
                    cluster_cidr: parse_cidr(&cluster_cidr)?,
                    lifecycle:
                        windlass::control_plane::controllers::node_lifecycle::LifecycleOptions {
                            grace: std::time::Duration::from_secs(
                                node_monitor_grace_seconds.max(1),
                            ),
                            default_toleration: std::time::Duration::from_secs(
                                default_toleration_seconds,
                            ),
                        },
                    ..Default::default()
                })
            };
            let store = match store {
                cli::Store::Sqlite => StoreKind::Sqlite,
                cli::Store::Etcd if etcd_endpoints.is_empty() => {
                    bail!("--store etcd needs --etcd-endpoints")
                }
                cli::Store::Etcd => StoreKind::Etcd(etcd_endpoints),
            };
            let runtime =
                tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
            runtime
                .block_on(server::run(
                    data_dir,
                    listen,
                    store,
                    std::time::Duration::from_secs(compaction_interval_seconds.max(1)),
                    controllers,
                    |running| {
                        tracing::info!(addr = %running.addr, kubeconfig = %running.kubeconfig.display(), "API server ready");
                        println!(
                            "windlass server listening on https://{}\nexport KUBECONFIG={}; kubectl get namespaces\njoin a node: windlass agent --server https://{} --token $(cat {})",
                            running.addr,
                            running.kubeconfig.display(),
                            running.addr,
                            running.node_token.display()
                        );
                    },
                    shutdown_signal(),
                ))
                .context("windlass server failed")?;
        }
        cli::Command::Controllers {
            kubeconfig,
            cluster_cidr,
        } => {
            let cluster_cidr = parse_cidr(&cluster_cidr)?;
            let runtime =
                tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
            runtime.block_on(async {
                let client =
                    windlass::control_plane::controllers::client_from_kubeconfig(&kubeconfig)
                        .await
                        .with_context(|| format!("cannot use {}", kubeconfig.display()))?;
                let options = windlass::control_plane::controllers::ControllerOptions {
                    cluster_cidr,
                    ..Default::default()
                };
                tokio::select! {
                    _ = windlass::control_plane::controllers::run_all(client, options) => {}
                    _ = shutdown_signal() => {}
                }
                anyhow::Ok(())
            })?;
        }
        cli::Command::Agent(args) => run_agent(*args)?,
        cli::Command::Version => {
            println!("windlass {}", env!("CARGO_PKG_VERSION"));
            println!(
                "ebpf: tc_counter.bpf.o ({} bytes), proxy.bpf.o ({} bytes)",
                windlass::ebpf::objects::TC_COUNTER.len(),
                windlass::ebpf::objects::PROXY.len()
            );
        }
        cli::Command::Proxy {
            command:
                cli::ProxyCommand::Dump {
                    bpf_root,
                    node_name,
                    output,
                },
        } => {
            let node_name = match node_name {
                Some(name) => name,
                None => host_name()?,
            };
            let dir = bpf_root.join(&node_name);
            let frontends = windlass::node::proxy::dump::read(&dir).with_context(|| {
                format!("cannot read the service proxy's maps in {}", dir.display())
            })?;
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&frontends)?),
                "text" => print!("{}", windlass::node::proxy::dump::text(&frontends)),
                other => bail!("unknown output format {other:?}: use text or json"),
            }
        }
        cli::Command::Image { command } => {
            use windlass::node::kubelet::images::{ImageStore, format_table};
            match command {
                cli::ImageCommand::Import { data_dir, archive } => {
                    let store = ImageStore::open(&data_dir).with_context(|| {
                        format!("cannot open the image store in {}", data_dir.display())
                    })?;
                    let imported = store
                        .import(&archive)
                        .with_context(|| format!("cannot import {}", archive.display()))?;
                    for image in imported {
                        println!("imported {} ({})", image.reference, image.id);
                    }
                }
                cli::ImageCommand::Pull {
                    data_dir,
                    insecure_registries,
                    reference,
                } => {
                    let store = ImageStore::open(&data_dir)
                        .with_context(|| {
                            format!("cannot open the image store in {}", data_dir.display())
                        })?
                        .with_insecure_registries(insecure_registries);
                    let runtime = tokio::runtime::Runtime::new()
                        .context("failed to start the tokio runtime")?;
                    let image = runtime
                        .block_on(store.pull(&reference, None))
                        .with_context(|| format!("cannot pull {reference}"))?;
                    println!("pulled {} ({})", image.reference, image.id);
                }
                cli::ImageCommand::Ls { data_dir } => {
                    let store = ImageStore::open(&data_dir).with_context(|| {
                        format!("cannot open the image store in {}", data_dir.display())
                    })?;
                    let images = store.list().context("cannot list images")?;
                    print!("{}", format_table(&images));
                }
            }
        }
    }
    Ok(())
}

/// `windlass agent`: the kubelet on this node.
fn run_agent(args: cli::AgentArgs) -> anyhow::Result<()> {
    // containerd runs CNI itself, from the conflist the agent writes into its conf dir.
    let (runtime_choice, cni_conf_dir) = match args.runtime {
        cli::RuntimeKind::Oci => (
            windlass::node::kubelet::RuntimeChoice::Oci,
            args.cni_conf_dir,
        ),
        cli::RuntimeKind::Cri => (
            windlass::node::kubelet::RuntimeChoice::Cri {
                endpoint: windlass::node::kubelet::runtime::cri::endpoint_path(
                    &args.container_runtime_endpoint,
                ),
            },
            Some(args.cni_conf_dir.unwrap_or_else(|| "/etc/cni/net.d".into())),
        ),
    };
    let beside = |name: &str| -> anyhow::Result<std::path::PathBuf> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        Ok(exe.with_file_name(name))
    };
    let node_name = match args.node_name {
        Some(name) => name,
        None => host_name()?,
    };
    let proxy = if args.disable_proxy {
        None
    } else {
        Some(windlass::node::proxy::ProxyOptions {
            node_name: node_name.clone(),
            node_ip: match &args.node_ip {
                Some(ip) => Some(
                    ip.parse()
                        .with_context(|| format!("--node-ip {ip:?} is not an IPv4 address"))?,
                ),
                None => None,
            },
            bpf_root: args.bpf_root.clone(),
            cgroup_dir: cgroup_v2_dir(&args.cgroup_root),
            service_cidr: parse_service_cidr(&args.service_cidr)?,
            bridge: args.bridge.clone(),
            metrics_addr: match args.metrics_bind_address.as_str() {
                "" => None,
                addr => Some(addr.parse().with_context(|| {
                    format!("--metrics-bind-address {addr:?} is not ADDRESS:PORT")
                })?),
            },
        })
    };
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let options = windlass::node::kubelet::KubeletOptions {
        node_name,
        node_ip: args.node_ip,
        runc_root: args.runc_root.unwrap_or_else(|| args.data_dir.join("runc")),
        data_dir: args.data_dir,
        cgroup_root: args.cgroup_root,
        cgroup_mount: "/sys/fs/cgroup".into(),
        pod_log_dir: args.pod_log_dir,
        runc: args.runc,
        shim: match args.shim {
            Some(p) => p,
            None => beside("windlass-shim")?,
        },
        cni_plugin: match args.cni_plugin {
            Some(p) => p,
            None => beside("windlass-cni")?,
        },
        cni_conf_dir,
        bridge: args.bridge,
        backoff_base: std::time::Duration::from_secs_f64(args.backoff_base_seconds.max(0.0)),
        pids_limit: args.pod_max_pids,
        manifest_dir: args.manifest_dir,
        runtime: runtime_choice,
        kubelet_port: args.kubelet_port,
        client_ca: Vec::new(),
    };
    let runtime = tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
    runtime.block_on(async {
        let kubeconfig_path = match (args.kubeconfig, args.server, args.token) {
            (Some(path), _, _) => path,
            (None, Some(server), Some(token)) => windlass::node::join::ensure_joined(
                &server,
                &token,
                &options.node_name,
                &options.data_dir,
            )
            .await
            .with_context(|| format!("cannot join the cluster at {server}"))?,
            _ => bail!("pass --kubeconfig, or --server with --token"),
        };
        // The kubelet server accepts client certificates signed by the kubeconfig's CA.
        let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig_path)
            .with_context(|| format!("cannot read {}", kubeconfig_path.display()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .with_context(|| format!("cannot use {}", kubeconfig_path.display()))?;
        let mut options = options;
        options.client_ca = config.root_cert.clone().unwrap_or_default();
        let client = kube::Client::try_from(config)
            .with_context(|| format!("cannot use {}", kubeconfig_path.display()))?;
        let shutdown = shutdown_signal().shared();
        let kubelet = windlass::node::kubelet::run(client.clone(), options, shutdown.clone());
        match proxy {
            None => kubelet.await.context("windlass agent failed"),
            Some(proxy) => {
                // Whichever fails first stops the agent (its pods keep running under their
                // shims, and the datapath stays attached through its pinned links).
                let proxy = async {
                    windlass::node::proxy::run(client, proxy, shutdown)
                        .await
                        .context("the service proxy failed")
                };
                let kubelet = async { kubelet.await.context("windlass agent failed") };
                tokio::try_join!(kubelet, proxy).map(|_| ())
            }
        }
    })
}

fn host_name() -> anyhow::Result<String> {
    Ok(hostname::get()
        .context("cannot read the host name; pass --node-name")?
        .to_string_lossy()
        .to_lowercase())
}

/// The cgroup v2 directory of `--cgroup-root`: under `/sys/fs/cgroup` on a unified host, under
/// `/sys/fs/cgroup/unified` on a hybrid one.
fn cgroup_v2_dir(root: &str) -> std::path::PathBuf {
    let base = std::path::Path::new("/sys/fs/cgroup");
    let mount = if base.join("cgroup.controllers").exists() {
        base.to_path_buf()
    } else {
        base.join("unified")
    };
    mount.join(root.trim_start_matches('/'))
}

/// `10.96.0.0/16` -> (network, prefix length).
fn parse_service_cidr(cidr: &str) -> anyhow::Result<(std::net::Ipv4Addr, u8)> {
    cidr.split_once('/')
        .and_then(|(ip, bits)| Some((ip.parse().ok()?, bits.parse::<u8>().ok()?)))
        .filter(|(_, bits)| *bits <= 32)
        .with_context(|| format!("--service-cidr {cidr:?} is not an IPv4 CIDR"))
}

/// `10.244.0.0/16` -> (address, prefix length), for pod CIDR ranges of /24 or larger.
fn parse_cidr(cidr: &str) -> anyhow::Result<(std::net::Ipv4Addr, u8)> {
    cidr.split_once('/')
        .and_then(|(ip, bits)| Some((ip.parse().ok()?, bits.parse::<u8>().ok()?)))
        .filter(|(_, bits)| *bits <= 24)
        .with_context(|| format!("--cluster-cidr {cidr:?} is not an IPv4 CIDR of /24 or larger"))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (kill, systemd, the kubelet).
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
