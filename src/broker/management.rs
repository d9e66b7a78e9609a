//! A small client for RabbitMQ's management HTTP API: `check` reads through it the policies in
//! force on the worker's queues, which AMQP cannot see. Plain HTTP/1.0 (one request per
//! connection, no chunked bodies), basic authentication, a deadline on every request.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::AmqpSettings;

/// The management API's port when `amqp.management_url` is empty.
pub const DEFAULT_PORT: u16 = crate::config::MANAGEMENT_DEFAULT_PORT;

/// How long one request may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer read (a queue's JSON is a few KiB).
const MAX_ANSWER: u64 = 4 * 1024 * 1024;

/// Where the management API is and how to sign in to it.
pub struct Management {
    host: String,
    port: u16,
    /// The path prefix the API is served under (`""` or `/prefix`).
    prefix: String,
    /// `user:password`, for basic authentication.
    credentials: SecretString,
    /// The vhost of `amqp.url`.
    pub vhost: String,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.address())
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a path segment).
pub fn encode(segment: &str) -> String {
    let mut out = String::new();
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Standard base64 with padding.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Management {
    /// The API of `amqp.management_url`, or, when it is empty, `http://<amqp.url host>:15672`;
    /// signed in as the user of the management URL if it names one, else the user of
    /// `amqp.url`.
    ///
    /// # Errors
    /// A URL that is not `http://[user:password@]host[:port][/prefix]`, named by its key.
    pub fn from_settings(amqp: &AmqpSettings) -> Result<Self, String> {
        let endpoint = amqp.management_endpoint()?;
        Ok(Self {
            host: endpoint.host,
            port: endpoint.port,
            prefix: endpoint.prefix,
            credentials: endpoint.credentials,
            vhost: endpoint.vhost,
        })
    }

    /// `host:port`, without credentials.
    pub fn address(&self) -> String {
        format!("{}:{}{}", self.host, self.port, self.prefix)
    }

    /// Sends `method path` (under `/api`) with a JSON `body`; returns the status and the body.
    ///
    /// # Errors
    /// No answer within [`TIMEOUT`], a connection failure, or an answer that is not HTTP.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), String> {
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| format!("no answer within {}s", TIMEOUT.as_secs()))?
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), String> {
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {}/api{path} HTTP/1.0\r\nHost: {}:{}\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.prefix,
            self.host,
            self.port,
            base64(self.credentials.expose_secret().as_bytes()),
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send: {e}"))?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| "the answer is not HTTP".to_owned())?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "the answer is not HTTP".to_owned())?;
        Ok((status, body.to_owned()))
    }

    /// Queue `name` of the vhost as the API describes it (arguments, `policy`,
    /// `operator_policy`, `effective_policy_definition`), or `None` when it does not exist.
    ///
    /// # Errors
    /// No answer, or an answer other than 200 and 404 (401: the user may not use the API).
    pub async fn queue(&self, name: &str) -> Result<Option<Value>, String> {
        let path = format!("/queues/{}/{}", encode(&self.vhost), encode(name));
        match self.request("GET", &path, None).await? {
            (200, body) => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| format!("the answer is not JSON: {e}")),
            (404, _) => Ok(None),
            (status, _) => Err(format!("HTTP {status}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads_like_the_standard() {
        assert_eq!(base64(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("aws-account-orders.dlq"), "aws-account-orders.dlq");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    fn amqp(url: &str, management: &str) -> AmqpSettings {
        let mut amqp = crate::config::Settings::from_toml(
            "[business_model]\nprovider_email_domain = \"provider.example\"",
        )
        .expect("valid")
        .amqp;
        amqp.url = url.to_owned().into();
        amqp.management_url = management.to_owned().into();
        amqp
    }

    #[test]
    fn the_api_defaults_to_the_broker_host_and_user() {
        let m = Management::from_settings(&amqp("amqp://worker:pw@rabbit.internal:5672/prod", ""))
            .expect("valid");
        assert_eq!(m.address(), "rabbit.internal:15672");
        assert_eq!(m.vhost, "prod");
        assert_eq!(m.credentials.expose_secret(), "worker:pw");
        assert!(!format!("{m:?}").contains("pw"));
    }

    #[test]
    fn a_management_url_sets_host_port_prefix_and_maybe_the_user() {
        let url = "amqp://worker:pw@rabbit:5672/%2f";
        let m = Management::from_settings(&amqp(url, "http://mgmt.internal:8080/rabbit/"))
            .expect("valid");
        assert_eq!(m.address(), "mgmt.internal:8080/rabbit");
        assert_eq!(m.credentials.expose_secret(), "worker:pw");
        let m = Management::from_settings(&amqp(url, "http://monitor:secret@mgmt")).expect("valid");
        assert_eq!(m.address(), "mgmt:80");
        assert_eq!(m.credentials.expose_secret(), "monitor:secret");
        for bad in [
            "https://mgmt",
            "mgmt:15672",
            "http://:15672",
            "http://mgmt:port",
        ] {
            assert!(Management::from_settings(&amqp(url, bad)).is_err(), "{bad}");
        }
    }
}
