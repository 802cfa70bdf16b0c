//! The gateway's resolver: hickory's, asking `[dns] servers` (or the system's), with its cache
//! (which honours each answer's TTL, negative answers by the zone's SOA) and a bound on each
//! lookup. One is built per chain generation, so a reload applies new `[dns]` settings.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;

use super::{LookupError, TxtSource};
use crate::config::dns::DnsConfig;

/// Answers kept in the cache (hickory's cache is by query; TTLs bound each entry's life).
const CACHE_ENTRIES: u64 = 4096;

pub struct Resolver {
    inner: hickory_resolver::TokioResolver,
    timeout: Duration,
}

impl Resolver {
    /// A resolver per `[dns]`; with no servers configured, the system's `/etc/resolv.conf`.
    pub fn new(config: &DnsConfig) -> anyhow::Result<Arc<Resolver>> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match config.servers.is_empty() {
            true => hickory_resolver::TokioResolver::builder(provider).map_err(|err| {
                anyhow::anyhow!("cannot read the system's DNS configuration ({err}): set [dns] servers = [\"IP:PORT\"]")
            })?,
            false => {
                let mut resolver = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
                for server in &config.servers {
                    let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
                    name_server.connections.iter_mut().for_each(|connection| connection.port = server.port());
                    resolver.add_name_server(name_server);
                }
                hickory_resolver::TokioResolver::builder_with_config(resolver, provider)
            }
        };
        let options = builder.options_mut();
        options.timeout = config.timeout.0;
        options.attempts = 1;
        options.cache_size = CACHE_ENTRIES;
        // A truncated UDP answer (a long RSA key with others) is asked again over TCP.
        options.try_tcp_on_error = true;
        let inner = builder.build().map_err(|err| anyhow::anyhow!("cannot start the DNS resolver: {err}"))?;
        Ok(Arc::new(Resolver { inner, timeout: config.timeout.0 }))
    }
}

#[async_trait]
impl TxtSource for Resolver {
    async fn txt_records(&self, name: &str) -> Result<Vec<Vec<Vec<u8>>>, LookupError> {
        // Fully qualified: never tried against the system's search domains.
        let fqdn = match name.ends_with('.') {
            true => name.to_string(),
            false => format!("{name}."),
        };
        let lookup = tokio::time::timeout(self.timeout, self.inner.txt_lookup(fqdn.as_str()))
            .await
            .map_err(|_| LookupError::Timeout)?
            .map_err(|err| classify(&err))?;
        let records = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::TXT(txt) => Some(txt.txt_data.iter().map(|s| s.to_vec()).collect()),
                _ => None,
            })
            .collect::<Vec<_>>();
        match records.is_empty() {
            true => Err(LookupError::NotFound),
            false => Ok(records),
        }
    }
}

fn classify(err: &NetError) -> LookupError {
    match err {
        _ if err.is_nx_domain() || err.is_no_records_found() => LookupError::NotFound,
        NetError::Timeout => LookupError::Timeout,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain)) => LookupError::NotFound,
        _ => LookupError::ServerFailure,
    }
}
