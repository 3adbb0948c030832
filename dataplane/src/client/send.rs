//! `weir send`: send events to a gateway over HTTP (protobuf) and print the answer.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use prost::Message;
use weir_proto::{Code, Event, SendEventRequest, SendEventResponse};

use crate::gateway::json::{Dialect, render_response};

/// Options of `weir send`.
#[derive(Clone, Debug, clap::Args)]
pub struct SendOptions {
    /// The gateway's HTTP address.
    #[arg(long, env = "WEIR_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Event type of the `--json` events.
    #[arg(long = "type", short = 't', default_value = "test")]
    pub event_type: String,
    /// An event's payload as JSON text; repeat for more events.
    #[arg(long)]
    pub json: Vec<String>,
    /// Events from a file (`-` for standard input), one JSON object per line:
    /// `{"type": "page_view", "data": {...}, "key": "optional partition key"}`.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Partition key of the `--json` events.
    #[arg(long)]
    pub key: Option<String>,
    /// Connection id, sent in `--id-header`.
    #[arg(long)]
    pub id: Option<String>,
    /// Connection group, sent in `--group-header`.
    #[arg(long)]
    pub group: Option<String>,
    /// Header that carries the connection id.
    #[arg(long, default_value = "X-User-ID")]
    pub id_header: String,
    /// Header that carries the connection group.
    #[arg(long, default_value = "X-User-Group")]
    pub group_header: String,
    /// Bearer token, when the gateway requires one.
    #[arg(long, env = "WEIR_TOKEN")]
    pub token: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEvent {
    #[serde(rename = "type")]
    event_type: String,
    data: serde_json::Value,
    #[serde(default)]
    key: Option<String>,
}

fn event(event_type: &str, data: &serde_json::Value, key: Option<&str>) -> Event {
    Event {
        event_bytes: Bytes::from(data.to_string()),
        r#type: event_type.to_string(),
        partition_key: key.unwrap_or_default().to_string(),
    }
}

/// Builds the batch from the options.
pub fn build_request(options: &SendOptions) -> anyhow::Result<SendEventRequest> {
    let mut events = Vec::new();
    for (i, text) in options.json.iter().enumerate() {
        let data: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("--json #{} is not JSON", i + 1))?;
        events.push(event(&options.event_type, &data, options.key.as_deref()));
    }
    if let Some(path) = &options.file {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ))
        };
        for (n, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed: FileEvent = serde_json::from_str(&line)
                .with_context(|| format!("{} line {}", path.display(), n + 1))?;
            events.push(event(
                &parsed.event_type,
                &parsed.data,
                parsed.key.as_deref(),
            ));
        }
    }
    if events.is_empty() {
        bail!("nothing to send: give --json or --file");
    }
    let now = std::time::SystemTime::now();
    Ok(SendEventRequest {
        req_guid: format!("weir-send-{}", crate::gateway::publish::unix_micros(now)),
        sent_time: Some(now.into()),
        events,
    })
}

/// Sends the batch and prints the answer; the exit code says whether it succeeded.
pub async fn run(options: SendOptions) -> anyhow::Result<ExitCode> {
    let request = build_request(&options)?;
    let url = format!("{}/api/v1/events", options.url.trim_end_matches('/'));
    let mut call = reqwest::Client::new()
        .post(&url)
        .header("Content-Type", "application/proto")
        .body(request.encode_to_vec());
    if let Some(id) = &options.id {
        call = call.header(&options.id_header, id);
    }
    if let Some(group) = &options.group {
        call = call.header(&options.group_header, group);
    }
    if let Some(token) = &options.token {
        call = call.header("Authorization", format!("Bearer {token}"));
    }
    let reply = call
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = reply.status();
    let body = reply.bytes().await?;
    let response = SendEventResponse::decode(body.clone()).with_context(|| {
        format!(
            "HTTP {status}: not a Weir answer: {}",
            String::from_utf8_lossy(&body)
        )
    })?;
    println!(
        "HTTP {status} {}",
        String::from_utf8_lossy(&render_response(&response, Dialect::Canonical))
    );
    Ok(if response.code() == Code::Ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
