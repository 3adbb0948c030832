//! Topics a pipeline lists are created, or grown to their partition count, through the
//! Kafka admin API. They are never deleted or shrunk: losing a topic loses data, so
//! that stays a deliberate act outside the operator.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use weir_crds::pipeline::{KafkaSpec, TopicSpec};

use crate::build::hash_of;

/// Creates and grows topics. The real one talks to Kafka; tests use a fake.
pub trait TopicAdmin: Send + Sync {
    /// Makes every topic exist with at least its partitions.
    fn ensure<'a>(
        &'a self,
        kafka: &'a KafkaSpec,
        topics: &'a [TopicSpec],
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The admin client of the data plane (`weir::kafka::ensure_topics`).
pub struct KafkaTopicAdmin;

impl TopicAdmin for KafkaTopicAdmin {
    fn ensure<'a>(
        &'a self,
        kafka: &'a KafkaSpec,
        topics: &'a [TopicSpec],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            weir::kafka::ensure_topics(kafka, topics)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// How long a successful ensure is trusted before Kafka is asked again (a topic deleted
/// by hand comes back within this time).
const RECHECK_AFTER: Duration = Duration::from_secs(600);

/// Remembers which topic lists were ensured, so the reconciles that Deployment status
/// changes trigger do not each call Kafka.
#[derive(Default)]
pub struct EnsuredTopics {
    by_pipeline: Mutex<HashMap<String, (String, Instant)>>,
}

impl EnsuredTopics {
    /// Ensures `topics` for `pipeline` unless the same list was ensured recently.
    pub async fn ensure(
        &self,
        admin: &dyn TopicAdmin,
        pipeline: &str,
        kafka: &KafkaSpec,
        topics: &[TopicSpec],
    ) -> Result<(), String> {
        let key = hash_of(&(kafka, topics));
        let fresh = self
            .by_pipeline
            .lock()
            .expect("lock")
            .get(pipeline)
            .is_some_and(|(k, at)| *k == key && at.elapsed() < RECHECK_AFTER);
        if fresh {
            return Ok(());
        }
        let result = admin.ensure(kafka, topics).await;
        let mut cache = self.by_pipeline.lock().expect("lock");
        match &result {
            Ok(()) => {
                cache.insert(pipeline.into(), (key, Instant::now()));
            }
            Err(_) => {
                cache.remove(pipeline);
            }
        }
        result
    }
}
