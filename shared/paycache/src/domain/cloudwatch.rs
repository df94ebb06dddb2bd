//! Publishing the node metrics with CloudWatch `PutMetricData`, for
//! `metrics-emitter`, with `aws-sdk-cloudwatch` on the execution
//! environment's shared [`crate::infra::aws::sdk_config`].
//!
//! `aws-sdk-cloudwatch` is pinned (workspace `Cargo.toml`) to the last
//! release that speaks CloudWatch's query protocol: later ones use Smithy
//! RPC v2 CBOR, which the local CloudWatch the tests publish to
//! (`moto_server` 5.2) does not route. CloudWatch accepts both.

use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use crate::domain::node_metrics::Datum;
use crate::infra::aws::AwsError;

/// The CloudWatch namespace of the node metrics.
pub const NAMESPACE: &str = "paycache/Redis";

/// PutMetricData takes at most 1000 data per request.
const BATCH: usize = 1000;

/// Budget of one PutMetricData request, retries included.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `PutMetricData`, by `metrics-emitter`.
pub const AWS_CALLS: &[crate::infra::aws::AwsCall] = &[crate::infra::aws::AwsCall {
    site: "domain/cloudwatch.rs",
    functions: &["metrics-emitter"],
    service: "monitoring",
    action: Some("cloudwatch:PutMetricData"),
    resources: &[],
    when_env: None,
}];

/// A CloudWatch client, built at the first publish (the SDK configuration
/// is loaded then, not at init: the function's cold start does not pay for
/// it).
#[derive(Debug, Clone, Default)]
pub struct CloudWatch {
    client: std::sync::Arc<tokio::sync::OnceCell<aws_sdk_cloudwatch::Client>>,
}

impl CloudWatch {
    async fn sdk(&self) -> Result<&aws_sdk_cloudwatch::Client, AwsError> {
        let client = self
            .client
            .get_or_init(|| async {
                aws_sdk_cloudwatch::Client::new(crate::infra::aws::sdk_config(TIMEOUT).await)
            })
            .await;
        match client.config().region() {
            Some(_) => Ok(client),
            None => Err(AwsError::Config("AWS_REGION")),
        }
    }
}

/// Builds nothing yet (see [`CloudWatch`]); a missing `AWS_REGION` is
/// reported by the first publish.
pub fn client() -> CloudWatch {
    CloudWatch::default()
}

#[derive(Debug, thiserror::Error)]
#[error("CloudWatch PutMetricData failed")]
pub(crate) struct PublishError(#[source] pub AwsError);

/// CloudWatch's unit for the node metrics' unit names.
fn unit(name: &str) -> StandardUnit {
    match name {
        "Percent" => StandardUnit::Percent,
        "Milliseconds" => StandardUnit::Milliseconds,
        "Count/Second" => StandardUnit::CountSecond,
        "Count" => StandardUnit::Count,
        "Bytes" => StandardUnit::Bytes,
        _ => StandardUnit::None,
    }
}

/// One datum: per node with dimension `Node`, cluster-wide `Cluster = all`.
fn datum(d: &Datum, timestamp: aws_sdk_cloudwatch::primitives::DateTime) -> MetricDatum {
    let (name, value) = match &d.node {
        Some(node) => ("Node", node.as_str()),
        None => ("Cluster", "all"),
    };
    MetricDatum::builder()
        .metric_name(d.name)
        .unit(unit(d.unit))
        .value(d.value)
        .timestamp(timestamp)
        .dimensions(Dimension::builder().name(name).value(value).build())
        .build()
}

/// Publishes `data`. Values CloudWatch cannot take (NaN, infinities) are
/// left out. Returns the number of data sent.
pub(crate) async fn publish(
    cloudwatch: &CloudWatch,
    data: &[Datum],
) -> Result<usize, PublishError> {
    let now = aws_sdk_cloudwatch::primitives::DateTime::from(std::time::SystemTime::now());
    let finite: Vec<MetricDatum> = data
        .iter()
        .filter(|d| d.value.is_finite())
        .map(|d| datum(d, now))
        .collect();
    let client = cloudwatch.sdk().await.map_err(PublishError)?;
    for chunk in finite.chunks(BATCH) {
        client
            .put_metric_data()
            .namespace(NAMESPACE)
            .set_metric_data(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| PublishError(crate::infra::aws::error("monitoring", TIMEOUT, &e)))?;
    }
    Ok(finite.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_carry_their_dimension_and_unit() {
        let now = aws_sdk_cloudwatch::primitives::DateTime::from_secs(1_790_000_000);
        let cluster = datum(
            &Datum {
                name: "cache_hit_rate",
                unit: "Percent",
                value: 97.5,
                node: None,
            },
            now,
        );
        assert_eq!(cluster.metric_name(), Some("cache_hit_rate"));
        assert_eq!(cluster.unit(), Some(&StandardUnit::Percent));
        assert_eq!(cluster.value(), Some(97.5));
        let d = &cluster.dimensions()[0];
        assert_eq!((d.name(), d.value()), (Some("Cluster"), Some("all")));
        let node = datum(
            &Datum {
                name: "evicted_keys",
                unit: "Count/Second",
                value: 3.0,
                node: Some("10.0.0.1:6379".into()),
            },
            now,
        );
        assert_eq!(node.unit(), Some(&StandardUnit::CountSecond));
        let d = &node.dimensions()[0];
        assert_eq!((d.name(), d.value()), (Some("Node"), Some("10.0.0.1:6379")));
    }
}
