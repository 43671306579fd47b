//! The `windlass` binary: parses the command line and hands off to the library.

mod cli;

use anyhow::{Context, bail};
use clap::Parser;
use futures::FutureExt as _;
use windlass::control_plane::server::{self, StoreKind};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // hickory-server logs every DNS question at info.
                tracing_subscriber::EnvFilter::new("info,hickory_server=warn")
            }),
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
            advertise_address,
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
                    store,
                    windlass::control_plane::apiserver::ServerOptions {
                        data_dir,
                        listen,
                        ranges: Default::default(),
                        compaction_interval: std::time::Duration::from_secs(
                            compaction_interval_seconds.max(1),
                        ),
                        controllers,
                        advertise: advertise_address,
                    },
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
        cli::Command::Agent(args) => {
            let runtime =
                tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
            runtime.block_on(run_agent(*args, shutdown_signal().boxed().shared()))?;
        }
        cli::Command::Up(args) => run_up(*args)?,
        cli::Command::Reset(args) => run_reset(*args)?,
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

/// How every part of a process learns it should stop: Ctrl-C or SIGTERM, shared.
type Shutdown = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

/// `windlass agent`: the kubelet, the service proxy and the node's network on this node.
async fn run_agent(args: cli::AgentArgs, shutdown: Shutdown) -> anyhow::Result<()> {
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
    let node_name = match args.node_name {
        Some(name) => name,
        None => host_name()?,
    };
    let node_ip: Option<std::net::Ipv4Addr> = args
        .node_ip
        .as_deref()
        .map(|ip| {
            ip.parse()
                .with_context(|| format!("--node-ip {ip:?} is not an IPv4 address"))
        })
        .transpose()?;
    let proxy = if args.disable_proxy {
        None
    } else {
        Some(windlass::node::proxy::ProxyOptions {
            node_name: node_name.clone(),
            node_ip,
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
    let network = if args.disable_network {
        None
    } else {
        let (ip, len) = parse_cidr(&args.cluster_cidr)?;
        Some(windlass::node::network::NetworkOptions {
            node_name: node_name.clone(),
            node_ip,
            overlay: match args.overlay {
                cli::Overlay::None => windlass::node::network::Overlay::None,
                cli::Overlay::Vxlan => windlass::node::network::Overlay::Vxlan,
            },
            cluster_cidr: windlass::node::network::desired::Cidr::new(ip, len).with_context(
                || format!("--cluster-cidr {:?} is not an IPv4 CIDR", args.cluster_cidr),
            )?,
        })
    };
    let dns = if args.disable_dns {
        None
    } else {
        Some(dns_options(
            args.dns_bind_address,
            node_ip,
            &args.cluster_domain,
            &args.resolv_conf,
        )?)
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
        cluster_dns: windlass::node::dns::resolv_conf::ClusterDns {
            servers: args.cluster_dns.clone(),
            domain: args.cluster_domain.clone(),
        },
        resolv_conf: args.resolv_conf.clone(),
    };
    {
        let kubeconfig_path = match (args.kubeconfig, args.server, args.token) {
            (Some(path), _, _) => path,
            (None, None, _) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                // In a pod (the DaemonSet): the service account's credentials.
                let config = kube::Config::incluster()
                    .context("cannot use the pod's in-cluster credentials")?;
                let mut options = options;
                options.client_ca = config.root_cert.clone().unwrap_or_default();
                let client = kube::Client::try_from(config)
                    .context("cannot use the pod's in-cluster credentials")?;
                return run_parts(
                    client,
                    options,
                    proxy,
                    network,
                    dns,
                    !args.disable_kubelet,
                    shutdown,
                )
                .await;
            }
            (None, Some(server), Some(token)) => windlass::node::join::ensure_joined(
                &server,
                &token,
                &options.node_name,
                &options.data_dir,
            )
            .await
            .with_context(|| format!("cannot join the cluster at {server}"))?,
            _ => bail!(
                "pass --kubeconfig, or --server with --token (or run in a pod, with in-cluster credentials)"
            ),
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
        run_parts(
            client,
            options,
            proxy,
            network,
            dns,
            !args.disable_kubelet,
            shutdown,
        )
        .await
    }
}

/// Runs the agent's parts side by side until shutdown; whichever fails first stops the agent
/// (its pods keep running under their shims, and the datapath stays attached through its
/// pinned links).
async fn run_parts(
    client: kube::Client,
    options: windlass::node::kubelet::KubeletOptions,
    proxy: Option<windlass::node::proxy::ProxyOptions>,
    network: Option<windlass::node::network::NetworkOptions>,
    dns: Option<windlass::node::dns::DnsOptions>,
    kubelet: bool,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    use windlass::node::{dns as dns_server, kubelet as node_kubelet, network as node_network};
    let kubelet = part(
        kubelet.then(|| node_kubelet::run(client.clone(), options, shutdown.clone())),
        "the kubelet failed",
    );
    let proxy = part(
        proxy.map(|p| windlass::node::proxy::run(client.clone(), p, shutdown.clone())),
        "the service proxy failed",
    );
    let network = part(
        network.map(|n| node_network::run(client.clone(), n, shutdown.clone())),
        "the node network failed",
    );
    let dns = part(
        dns.map(|d| dns_server::run(client.clone(), d, shutdown.clone())),
        "the cluster DNS server failed",
    );
    tokio::try_join!(kubelet, proxy, network, dns).map(|_| ())
}

/// One part of the agent, if it runs at all; its error says which part failed.
async fn part<E>(
    run: Option<impl std::future::Future<Output = Result<(), E>>>,
    what: &'static str,
) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match run {
        Some(run) => run.await.context(what),
        None => Ok(()),
    }
}

/// Parses `windlass agent` flags (for `windlass up`, which runs an agent with its defaults).
#[derive(Debug, clap::Parser)]
struct AgentOnly {
    #[command(flatten)]
    args: cli::AgentArgs,
}

/// `windlass up`: the server on SQLite and an agent for this host, in one process.
fn run_up(args: cli::UpArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let controllers = windlass::control_plane::controllers::ControllerOptions {
        cluster_cidr: parse_cidr(&args.cluster_cidr)?,
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
    let stop = runtime.block_on(async {
        let shutdown: Shutdown = shutdown_signal().boxed().shared();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let server = server::run(
            StoreKind::Sqlite,
            windlass::control_plane::apiserver::ServerOptions {
                data_dir: data_dir.clone(),
                listen: args.listen,
                ranges: Default::default(),
                compaction_interval: std::time::Duration::from_secs(300),
                controllers: Some(controllers),
                advertise: None,
            },
            move |running| {
                let _ = ready_tx.send((
                    running.addr,
                    running.kubeconfig.clone(),
                    running.node_token.clone(),
                ));
            },
            shutdown.clone(),
        );
        let server = async { server.await.context("the API server failed") };
        let agent = async {
            let Ok((addr, kubeconfig, token_path)) = ready_rx.await else {
                // The server stopped before it was ready; its error is the one to report.
                return std::future::pending().await;
            };
            let token = std::fs::read_to_string(&token_path)
                .with_context(|| format!("cannot read {}", token_path.display()))?;
            let host = if addr.ip().is_unspecified() {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            } else {
                addr.ip()
            };
            let url = format!("https://{}", std::net::SocketAddr::new(host, addr.port()));
            let mut argv: Vec<std::ffi::OsString> = vec!["windlass agent".into()];
            for flag in ["--server", url.as_str(), "--token", token.trim()] {
                argv.push(flag.into());
            }
            argv.push("--data-dir".into());
            argv.push(data_dir.clone().into());
            argv.extend(args.agent_args.iter().map(Into::into));
            let agent = <AgentOnly as clap::Parser>::try_parse_from(argv)
                .context("invalid agent flags after --")?
                .args;
            let stop = windlass::node::reset::ResetOptions {
                data_dir: data_dir.clone(),
                node_name: String::new(),
                cgroup_root: agent.cgroup_root.clone(),
                bpf_root: agent.bpf_root.clone(),
                bridge: agent.bridge.clone(),
                service_cidr: parse_service_cidr(&agent.service_cidr)?,
                cni_conf_dir: None,
                runc: agent.runc.clone(),
                shim: match &agent.shim {
                    Some(p) => p.clone(),
                    None => beside("windlass-shim")?,
                },
                grace: std::time::Duration::from_secs(10),
            };
            let advertised = std::net::SocketAddr::new(
                windlass::control_plane::apiserver::bootstrap::advertise_address(addr),
                addr.port(),
            );
            println!(
                "windlass is up: API server on https://{advertised} (listening on {addr}); this host \
                 joins as node {}\nexport KUBECONFIG={}; kubectl get nodes",
                agent
                    .node_name
                    .clone()
                    .or_else(|| host_name().ok())
                    .unwrap_or_default(),
                kubeconfig.display()
            );
            run_agent(agent, shutdown.clone()).await?;
            anyhow::Ok(stop)
        };
        tokio::try_join!(server, agent).map(|(_, stop)| stop)
    })?;
    // The agent's tasks (pod workers, watches) end with its runtime; only then are the pods
    // stopped, so nothing of the agent's works on them at the same time.
    drop(runtime);
    if args.stop_pods {
        let runtime =
            tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
        let (containers, sandboxes) = runtime
            .block_on(windlass::node::reset::stop_pods(&stop))
            .context("cannot stop the pods")?;
        println!("stopped {containers} containers in {sandboxes} pods");
    }
    Ok(())
}

/// `windlass reset`: removes what an agent set up on this node.
fn run_reset(args: cli::ResetArgs) -> anyhow::Result<()> {
    let options = windlass::node::reset::ResetOptions {
        node_name: match args.node_name {
            Some(name) => name,
            None => host_name()?,
        },
        data_dir: args.data_dir,
        cgroup_root: args.cgroup_root,
        bpf_root: args.bpf_root,
        bridge: args.bridge,
        service_cidr: parse_service_cidr(&args.service_cidr)?,
        cni_conf_dir: args.cni_conf_dir,
        runc: args.runc,
        shim: beside("windlass-shim")?,
        grace: std::time::Duration::from_secs(10),
    };
    let runtime = tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
    let errors = runtime.block_on(windlass::node::reset::reset(&options));
    if errors.is_empty() {
        println!("node reset: pods, cgroups, mounts, network, BPF pins and state removed");
        return Ok(());
    }
    for e in &errors {
        eprintln!("windlass reset: {e}");
    }
    bail!(
        "{} reset steps failed; run it again once the cause is fixed",
        errors.len()
    )
}

/// A sibling of this binary (`windlass-shim`, `windlass-cni`).
fn beside(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("cannot find this binary")?;
    Ok(exe.with_file_name(name))
}

/// The agent's DNS server from `--dns-bind-address` (default: the node IP, port 53),
/// `--cluster-domain` and the nameservers of `--resolv-conf`.
fn dns_options(
    bind_address: Option<std::net::SocketAddr>,
    node_ip: Option<std::net::Ipv4Addr>,
    cluster_domain: &str,
    resolv_conf: &std::path::Path,
) -> anyhow::Result<windlass::node::dns::DnsOptions> {
    let listen = match bind_address {
        Some(addr) => addr,
        None => {
            let ip = match node_ip {
                Some(ip) => ip,
                None => windlass::node::kubelet::first_ipv4()
                    .and_then(|ip| ip.parse().ok())
                    .context(
                        "cannot pick the DNS server's address: no --node-ip and no global IPv4 address; pass --dns-bind-address or --disable-dns",
                    )?,
            };
            std::net::SocketAddr::new(ip.into(), 53)
        }
    };
    let upstreams = windlass::node::dns::upstreams_from_resolv_conf(resolv_conf)
        .with_context(|| format!("cannot read {}", resolv_conf.display()))?;
    Ok(windlass::node::dns::DnsOptions {
        listen,
        cluster_domain: cluster_domain.to_string(),
        upstreams,
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
