//! The hickory-server request handler: questions in the cluster zone are answered from
//! [`records`](super::records), all others are forwarded upstream.

use std::sync::Arc;

use hickory_proto::op::{Edns, Header, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};

use super::forward::{ForwardError, Forwarder};
use super::records::{Answer, ClusterState, Zone};

/// The EDNS payload size this server advertises.
const EDNS_PAYLOAD: u16 = 1232;

/// Answers DNS requests for the cluster zone and forwards the rest.
pub struct Handler {
    zone: Zone,
    state: Arc<dyn ClusterState>,
    forwarder: Forwarder,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("zone", &self.zone.origin().to_string())
            .field("upstreams", &self.forwarder.upstreams())
            .finish()
    }
}

impl Handler {
    /// A handler for `zone` answering from `state` and forwarding through `forwarder`.
    pub fn new(zone: Zone, state: Arc<dyn ClusterState>, forwarder: Forwarder) -> Self {
        Handler {
            zone,
            state,
            forwarder,
        }
    }
}

/// Sends `answers`/`authority`/`additionals` with `header`, logging a failed send.
async fn send<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    header: Header,
    answers: &[Record],
    authority: &[Record],
    additionals: &[Record],
) -> ResponseInfo {
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if request.edns().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        builder.edns(edns);
    }
    let message = builder.build(
        header,
        answers.iter(),
        authority.iter(),
        std::iter::empty(),
        additionals.iter(),
    );
    match response.send_response(message).await {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(client = %request.src(), error = %e, "failed to send a DNS response");
            header.into()
        }
    }
}

/// The target of an ExternalName service's CNAME when an address was asked for (CoreDNS
/// resolves it too: stub resolvers do not follow a CNAME the server left dangling).
fn cname_target(answers: &[Record], qtype: RecordType) -> Option<Name> {
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        return None;
    }
    match answers {
        [only] => match only.data() {
            RData::CNAME(cname) => Some(cname.0.clone()),
            _ => None,
        },
        _ => None,
    }
}

impl Handler {
    /// The address records of `target` (an ExternalName's CNAME target): from the cluster
    /// zone, or from upstream; none when it cannot be resolved (the client still gets the
    /// CNAME).
    async fn chase(&self, target: &Name, query: &Query) -> Vec<Record> {
        match self
            .zone
            .answer(self.state.as_ref(), target, query.query_type())
        {
            Answer::Records { answers, .. } => {
                // One level only: a CNAME to a CNAME in the zone is left to the client.
                answers
                    .into_iter()
                    .filter(|r| !matches!(r.data(), RData::CNAME(_)))
                    .collect()
            }
            Answer::Forward => {
                let mut chased = query.clone();
                chased.set_name(target.clone());
                match self.forwarder.forward(&chased, false).await {
                    Ok(upstream) => upstream.answers().to_vec(),
                    Err(e) => {
                        tracing::debug!(target = %target, error = %e, "external name not resolved");
                        Vec::new()
                    }
                }
            }
            Answer::NoData | Answer::NxDomain => Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            header.set_response_code(ResponseCode::NotImp);
            return send(request, response, header, &[], &[], &[]).await;
        }
        let query = match request.request_info() {
            Ok(info) => info.query.original().clone(),
            Err(_) => {
                header.set_response_code(ResponseCode::FormErr);
                return send(request, response, header, &[], &[], &[]).await;
            }
        };
        let name = query.name().clone();
        let qtype = query.query_type();
        let answer = self.zone.answer(self.state.as_ref(), &name, qtype);
        tracing::trace!(client = %request.src(), name = %name, qtype = %qtype, answer = ?answer, "dns question");
        match answer {
            Answer::Records {
                mut answers,
                additionals,
            } => {
                header.set_authoritative(true);
                if let Some(target) = cname_target(&answers, qtype) {
                    answers.extend(self.chase(&target, &query).await);
                }
                send(request, response, header, &answers, &[], &additionals).await
            }
            Answer::NoData => {
                header.set_authoritative(true);
                let soa = [self.zone.soa().clone()];
                send(request, response, header, &[], &soa, &[]).await
            }
            Answer::NxDomain => {
                header.set_authoritative(true);
                header.set_response_code(ResponseCode::NXDomain);
                let soa = [self.zone.soa().clone()];
                send(request, response, header, &[], &soa, &[]).await
            }
            Answer::Forward => match self
                .forwarder
                .forward(&query, request.checking_disabled())
                .await
            {
                Ok(upstream) => {
                    header.set_response_code(upstream.response_code());
                    header.set_authentic_data(upstream.authentic_data());
                    send(
                        request,
                        response,
                        header,
                        upstream.answers(),
                        upstream.name_servers(),
                        upstream.additionals(),
                    )
                    .await
                }
                Err(e) => {
                    match &e {
                        ForwardError::NoUpstream => {
                            tracing::debug!(name = %name, "no upstream resolver; answering SERVFAIL")
                        }
                        _ => tracing::warn!(name = %name, error = %e, "forwarding failed"),
                    }
                    header.set_response_code(ResponseCode::ServFail);
                    send(request, response, header, &[], &[], &[]).await
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hickory_proto::op::Message;
    use k8s_openapi::api::core::v1::{Service, ServiceSpec};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One ClusterIP service, `web.default` at 10.96.0.20.
    struct OneService;

    impl ClusterState for OneService {
        fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
            (namespace == "default" && name == "web").then(|| {
                Arc::new(Service {
                    metadata: ObjectMeta {
                        name: Some("web".into()),
                        namespace: Some("default".into()),
                        ..Default::default()
                    },
                    spec: Some(ServiceSpec {
                        cluster_ip: Some("10.96.0.20".into()),
                        ..Default::default()
                    }),
                    status: None,
                })
            })
        }
        fn endpoint_slices(&self, _: &str, _: &str) -> Vec<Arc<EndpointSlice>> {
            Vec::new()
        }
    }

    /// A server for `cluster.local` on loopback (UDP and TCP on one port) with `upstreams`.
    async fn serve(
        upstreams: Vec<SocketAddr>,
    ) -> (SocketAddr, hickory_server::ServerFuture<Handler>) {
        serve_zone("cluster.local", upstreams).await
    }

    /// A server for `zone` on loopback (UDP and TCP on one port) with `upstreams`.
    async fn serve_zone(
        zone: &str,
        upstreams: Vec<SocketAddr>,
    ) -> (SocketAddr, hickory_server::ServerFuture<Handler>) {
        // A free UDP port whose TCP twin is free too (other tests hold ports).
        let (udp, tcp, addr) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                break (udp, tcp, addr);
            }
        };
        let handler = Handler::new(
            Zone::new(zone).unwrap(),
            Arc::new(OneService),
            Forwarder::new(upstreams),
        );
        let mut server = hickory_server::ServerFuture::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5));
        (addr, server)
    }

    fn question(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut message = Message::new();
        message
            .set_id(7)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        message.to_vec().unwrap()
    }

    async fn ask_udp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket
            .send_to(&question(name, qtype), server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    }

    async fn ask_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
        let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
        let bytes = question(name, qtype);
        let len = u16::try_from(bytes.len()).unwrap();
        stream.write_all(&len.to_be_bytes()).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await.unwrap();
        Message::from_vec(&buf).unwrap()
    }

    #[tokio::test]
    async fn cluster_names_over_udp_and_tcp() {
        let (addr, mut server) = serve(Vec::new()).await;
        for answer in [
            ask_udp(addr, "web.default.svc.cluster.local.", RecordType::A).await,
            ask_tcp(addr, "web.default.svc.cluster.local.", RecordType::A).await,
        ] {
            assert_eq!(answer.id(), 7);
            assert_eq!(answer.response_code(), ResponseCode::NoError);
            assert!(answer.authoritative());
            assert_eq!(answer.answers().len(), 1);
            assert_eq!(answer.answers()[0].data().to_string(), "10.96.0.20");
            assert_eq!(answer.answers()[0].ttl(), 5);
        }
        server.shutdown_gracefully().await.unwrap();
    }

    #[tokio::test]
    async fn missing_names_are_nxdomain_with_the_soa() {
        let (addr, mut server) = serve(Vec::new()).await;
        let answer = ask_udp(addr, "nope.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::NXDomain);
        assert!(answer.answers().is_empty());
        let authority = answer.name_servers();
        assert_eq!(authority.len(), 1);
        assert_eq!(authority[0].record_type(), RecordType::SOA);
        assert_eq!(authority[0].name().to_string(), "cluster.local.");
        // NODATA: the name exists, no AAAA.
        let answer = ask_udp(addr, "web.default.svc.cluster.local.", RecordType::AAAA).await;
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert!(answer.answers().is_empty());
        assert_eq!(answer.name_servers()[0].record_type(), RecordType::SOA);
        server.shutdown_gracefully().await.unwrap();
    }

    #[tokio::test]
    async fn outside_names_without_upstream_are_servfail_at_once() {
        let (addr, mut server) = serve(Vec::new()).await;
        let started = std::time::Instant::now();
        let answer = ask_udp(addr, "example.org.", RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::ServFail);
        assert!(started.elapsed() < Duration::from_secs(1));
        server.shutdown_gracefully().await.unwrap();
    }

    #[tokio::test]
    async fn outside_names_are_forwarded() {
        // The upstream is another of these servers, for the zone `upstream.test`.
        let (upstream, mut upstream_server) = serve_zone("upstream.test", Vec::new()).await;
        let (addr, mut server) = serve(vec![upstream]).await;
        let answer = ask_udp(addr, "web.default.svc.upstream.test.", RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert!(!answer.authoritative());
        assert!(answer.recursion_available());
        assert_eq!(answer.answers()[0].data().to_string(), "10.96.0.20");
        // The upstream's NXDOMAIN and its SOA come back as they were.
        let answer = ask_tcp(addr, "nope.default.svc.upstream.test.", RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::NXDomain);
        assert_eq!(
            answer.name_servers()[0].name().to_string(),
            "upstream.test."
        );
        server.shutdown_gracefully().await.unwrap();
        upstream_server.shutdown_gracefully().await.unwrap();
    }
}
