//! A DNS server for discovery tests, on 127.0.0.1:0 over UDP: A, AAAA and SRV records the test
//! sets and changes while it runs, every answer shuffled, every query counted. Names without
//! records answer NXDOMAIN; `set_failing` answers SERVFAIL; `stop` stops answering at all.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// One SRV record: target and port.
#[derive(Debug, Clone)]
pub struct Srv {
    pub target: String,
    pub port: u16,
}

#[derive(Default)]
struct Zone {
    addresses: HashMap<String, Vec<IpAddr>>,
    srv: HashMap<String, Vec<Srv>>,
}

/// The server; stops when dropped.
pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    failing: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

/// A name as the zone keys it: lower case, with its trailing dot.
fn key(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.ends_with('.') { n } else { n + "." }
}

impl TestDns {
    pub async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone: Arc<Mutex<Zone>> = Default::default();
        let failing: Arc<AtomicBool> = Default::default();
        let queries: Arc<AtomicUsize> = Default::default();
        let (z, f, q) = (zone.clone(), failing.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let reply = answer(&query, &z, f.load(Ordering::SeqCst));
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        TestDns {
            addr,
            zone,
            failing,
            queries,
            task: Some(task),
        }
    }

    /// Sets the A/AAAA records of `name` (none: NXDOMAIN).
    pub fn set(&self, name: &str, ips: &[IpAddr]) {
        let mut z = self.zone.lock().unwrap();
        z.addresses.insert(key(name), ips.to_vec());
    }

    /// Sets the SRV records of `name`.
    pub fn set_srv(&self, name: &str, records: &[Srv]) {
        let mut z = self.zone.lock().unwrap();
        z.srv.insert(key(name), records.to_vec());
    }

    /// Answers SERVFAIL to everything while on.
    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// Stops answering: the socket is closed.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

fn answer(query: &Message, zone: &Mutex<Zone>, failing: bool) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    for q in query.queries() {
        reply.add_query(q.clone());
    }
    if failing {
        reply.set_response_code(ResponseCode::ServFail);
        return reply;
    }
    let Some(q) = query.queries().first() else {
        reply.set_response_code(ResponseCode::FormErr);
        return reply;
    };
    let name = q.name().clone();
    let k = key(&name.to_ascii());
    let z = zone.lock().unwrap();
    let mut records: Vec<Record> = Vec::new();
    let mut exists = false;
    if let Some(ips) = z.addresses.get(&k) {
        exists |= !ips.is_empty();
        for ip in ips {
            match (ip, q.query_type()) {
                (IpAddr::V4(v4), RecordType::A) => {
                    records.push(Record::from_rdata(name.clone(), 1, RData::A(A(*v4))))
                }
                (IpAddr::V6(v6), RecordType::AAAA) => {
                    records.push(Record::from_rdata(name.clone(), 1, RData::AAAA(AAAA(*v6))))
                }
                _ => {}
            }
        }
    }
    if let Some(srv) = z.srv.get(&k) {
        exists |= !srv.is_empty();
        if q.query_type() == RecordType::SRV {
            for s in srv {
                let target = Name::from_str(&key(&s.target)).unwrap();
                records.push(Record::from_rdata(
                    name.clone(),
                    1,
                    RData::SRV(SRV::new(0, 1, s.port, target)),
                ));
            }
        }
    }
    drop(z);
    if !exists {
        reply.set_response_code(ResponseCode::NXDomain);
        return reply;
    }
    fastrand::shuffle(&mut records);
    for r in records {
        reply.add_answer(r);
    }
    reply
}
