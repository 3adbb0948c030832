//! The Kafka record contract between the gateway and its consumers (the sink).
//!
//! Value: the event's bytes, unchanged. Key: the event's partition key, else the
//! connection id, else none. Headers, all UTF-8 text:

/// The event's type, as the client sent it.
pub const EVENT_TYPE: &str = "weir-event-type";
/// The batch's `req_guid`.
pub const REQ_GUID: &str = "weir-req-guid";
/// The connection group.
pub const CONN_GROUP: &str = "weir-conn-group";
/// The client's `sent_time`, Unix microseconds in decimal; absent when the client sent none.
pub const SENT_TIME: &str = "weir-sent-time";
/// When the gateway received the batch, Unix microseconds in decimal.
pub const RECEIVE_TIME: &str = "weir-receive-time";
/// Why the event went to the dead-letter topic; only on dead-lettered events.
pub const DEAD_LETTER_REASON: &str = "weir-dead-letter-reason";
