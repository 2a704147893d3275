//! The consumer's connection as every client makes it: the coordinator's address and mutual
//! TLS from `consumer.toml`, the key that signs its jobs, and errors a person can act on.

use std::path::Path;

use anyhow::Result;
use tonic::transport::Channel;
use veil_proto::client::ConsumerFile;
use veil_proto::submission::Signer;

/// Connects as the consumer described by `config`.
pub async fn channel(config: &Path, plaintext: bool) -> Result<Channel> {
    let file = ConsumerFile::load(config)?;
    let tls = if plaintext { None } else { Some(file.tls()?) };
    let url = if plaintext {
        file.coordinator.replacen("https://", "http://", 1)
    } else {
        file.coordinator.clone()
    };
    veil_proto::client::connect(&url, tls.as_ref()).await.map_err(anyhow::Error::msg)
}

/// The key that signs the consumer's jobs.
pub fn signer(config: &Path) -> Result<Signer> {
    Ok(ConsumerFile::load(config)?.signer(veil_analytics::Job::plan_check)?)
}

/// A gRPC status as one sentence: what kind of error, the coordinator's message, and a hint
/// for the transport failures a consumer meets.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}{}", code_name(s.code()), s.message(), hint(&s))
}

/// What a transport failure most likely means, for the two a consumer meets: a coordinator
/// whose TLS handshake refused this certificate (it ends the connection, which the client
/// reports as cancelled), and a client and coordinator that disagree on TLS.
fn hint(s: &tonic::Status) -> &'static str {
    let m = s.message().to_ascii_lowercase();
    if m.contains("h2 protocol error") || m.contains("invalid http version") {
        "\n  hint: the coordinator and this client disagree on TLS: a plain-text client against \
         a TLS coordinator (or the reverse). Use the https:// address from consumer.toml, and \
         --dangerous-plaintext only against a coordinator started with it"
    } else if s.code() == tonic::Code::Cancelled
        || m.contains("operation was canceled")
        || m.contains("transport error")
        || m.contains("handshake")
        || m.contains("certificate")
    {
        "\n  hint: the coordinator ended the connection during or right after the TLS handshake: \
         check that the certificate in consumer.toml was issued by this consortium's CA (veil \
         init) and that the coordinator address is this consortium's"
    } else {
        ""
    }
}

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::InvalidArgument => "invalid request",
        tonic::Code::NotFound => "not found",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "not authenticated",
        tonic::Code::FailedPrecondition => "not possible now",
        tonic::Code::Unavailable => "coordinator unavailable",
        _ => "error",
    }
}

/// The chain joined with ": " like `{:#}`, except that a cause an error already ends with (an
/// error type whose message includes its source) is not repeated.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !previous.ends_with(&message) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&message);
        }
        previous = message;
    }
    line
}
