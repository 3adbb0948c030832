//! The Kafka record contract between the gateway and its consumers (the sink): the header
//! names, how the gateway writes them ([`GatewayHeaders`]) and how a consumer reads them
//! back ([`ReadHeaders`]), in this one place.
//!
//! Value: the event's bytes, unchanged. Key: the event's partition key, else the
//! connection id, else none. Headers, all UTF-8 text; times are Unix microseconds in
//! decimal. A reader ignores headers it does not know and any value it cannot parse.

use rdkafka::message::{Header, OwnedHeaders};

/// The event's type, as the client sent it.
pub const EVENT_TYPE: &str = "weir-event-type";
/// The batch's `req_guid`.
pub const REQ_GUID: &str = "weir-req-guid";
/// The connection group.
pub const CONN_GROUP: &str = "weir-conn-group";
/// The sender's tenant; absent when the sender has none.
pub const TENANT: &str = "weir-tenant";
/// The client's `sent_time`, Unix microseconds in decimal; absent when the client sent none.
pub const SENT_TIME: &str = "weir-sent-time";
/// When the gateway received the batch, Unix microseconds in decimal.
pub const RECEIVE_TIME: &str = "weir-receive-time";
/// Why the event went to a dead-letter topic; only on dead-lettered events.
pub const DEAD_LETTER_REASON: &str = "weir-dead-letter-reason";
/// Where a record the sink dead-lettered to a topic came from: `<topic>/<partition>/<offset>`.
pub const SOURCE: &str = "weir-source";

/// The headers the gateway writes on every event's record.
pub struct GatewayHeaders<'a> {
    /// [`EVENT_TYPE`].
    pub event_type: &'a str,
    /// [`REQ_GUID`].
    pub req_guid: &'a str,
    /// [`CONN_GROUP`].
    pub conn_group: &'a str,
    /// [`TENANT`].
    pub tenant: Option<&'a str>,
    /// [`RECEIVE_TIME`], already in decimal (formatted once per batch).
    pub receive_time: &'a str,
    /// [`SENT_TIME`], already in decimal.
    pub sent_time: Option<&'a str>,
    /// [`DEAD_LETTER_REASON`], for events routed to a dead-letter topic.
    pub dead_letter_reason: Option<&'a str>,
}

impl GatewayHeaders<'_> {
    /// The Kafka headers.
    pub fn to_kafka(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(7)
            .insert(text(EVENT_TYPE, self.event_type))
            .insert(text(REQ_GUID, self.req_guid))
            .insert(text(CONN_GROUP, self.conn_group))
            .insert(text(RECEIVE_TIME, self.receive_time));
        if let Some(sent) = self.sent_time {
            headers = headers.insert(text(SENT_TIME, sent));
        }
        if let Some(tenant) = self.tenant {
            headers = headers.insert(text(TENANT, tenant));
        }
        if let Some(reason) = self.dead_letter_reason {
            headers = headers.insert(text(DEAD_LETTER_REASON, reason));
        }
        headers
    }
}

/// The headers of a record the sink republishes to its dead-letter topic.
pub fn sink_dead_letter_headers(event_type: &str, reason: &str, source: &str) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(3)
        .insert(text(EVENT_TYPE, event_type))
        .insert(text(DEAD_LETTER_REASON, reason))
        .insert(text(SOURCE, source))
}

fn text<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// What a consumer reads from a record's headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadHeaders {
    /// [`EVENT_TYPE`]; `None` for records of other producers.
    pub event_type: Option<String>,
    /// [`REQ_GUID`].
    pub req_guid: Option<String>,
    /// [`CONN_GROUP`].
    pub conn_group: Option<String>,
    /// [`TENANT`].
    pub tenant: Option<String>,
    /// [`SENT_TIME`], Unix microseconds.
    pub sent_time_us: Option<i64>,
    /// [`RECEIVE_TIME`], Unix microseconds.
    pub receive_time_us: Option<i64>,
}

impl ReadHeaders {
    /// Reads the known headers; unknown ones and values that do not parse are ignored.
    pub fn parse<'a>(headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Self {
        let text = |v: Option<&[u8]>| {
            v.and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_string)
        };
        let mut out = Self::default();
        for (name, value) in headers {
            match name {
                EVENT_TYPE => out.event_type = text(value),
                REQ_GUID => out.req_guid = text(value),
                CONN_GROUP => out.conn_group = text(value),
                TENANT => out.tenant = text(value),
                SENT_TIME => out.sent_time_us = text(value).and_then(|t| t.parse().ok()),
                RECEIVE_TIME => out.receive_time_us = text(value).and_then(|t| t.parse().ok()),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn what_the_gateway_writes_a_consumer_reads_back() {
        let written = GatewayHeaders {
            event_type: "page_view",
            req_guid: "g-1",
            conn_group: "android",
            tenant: Some("acme"),
            receive_time: "1700000000000001",
            sent_time: Some("1699999999000000"),
            dead_letter_reason: None,
        }
        .to_kafka();
        let read = ReadHeaders::parse(written.iter().map(|h| (h.key, h.value)));
        assert_eq!(
            read,
            ReadHeaders {
                event_type: Some("page_view".into()),
                req_guid: Some("g-1".into()),
                conn_group: Some("android".into()),
                tenant: Some("acme".into()),
                sent_time_us: Some(1_699_999_999_000_000),
                receive_time_us: Some(1_700_000_000_000_001),
            }
        );
    }

    #[test]
    fn unknown_headers_and_bad_values_are_ignored() {
        let read = ReadHeaders::parse([
            (EVENT_TYPE, Some(&b"click"[..])),
            (SENT_TIME, Some(&b"not a number"[..])),
            (RECEIVE_TIME, None),
            ("x-other", Some(&b"1"[..])),
            (REQ_GUID, Some(&[0xff, 0xfe][..])),
        ]);
        assert_eq!(read.event_type.as_deref(), Some("click"));
        assert_eq!(read.sent_time_us, None);
        assert_eq!(read.receive_time_us, None);
        assert_eq!(read.req_guid, None);
    }
}
