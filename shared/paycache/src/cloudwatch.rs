//! Publishing the node metrics with CloudWatch `PutMetricData`
//! (`aws-sdk-cloudwatch`), for `metrics-emitter`.
//!
//! The SDK is built without its default TLS stack (aws-lc): its HTTP client
//! uses rustls with ring, like every other connection of this project.
//! Credentials, region and endpoint come from the standard AWS environment
//! (`AWS_REGION`, the Lambda role's credentials, and `AWS_ENDPOINT_URL` for a
//! local CloudWatch-compatible endpoint such as `moto_server`).

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

use crate::node_metrics::Datum;

/// The CloudWatch namespace of the node metrics.
pub const NAMESPACE: &str = "paycache/Redis";

/// PutMetricData takes at most 1000 data per request.
const BATCH: usize = 1000;

pub async fn client() -> aws_sdk_cloudwatch::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_config::from_env().http_client(http).load().await;
    aws_sdk_cloudwatch::Client::new(&config)
}

#[derive(Debug, thiserror::Error)]
#[error("CloudWatch PutMetricData failed")]
pub struct PublishError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

fn unit(name: &str) -> StandardUnit {
    match name {
        "Percent" => StandardUnit::Percent,
        "Milliseconds" => StandardUnit::Milliseconds,
        "Count/Second" => StandardUnit::CountSecond,
        "Count" => StandardUnit::Count,
        _ => StandardUnit::None,
    }
}

/// Publishes `data`: per node with dimension `Node`, cluster-wide with
/// `Cluster = all`. Returns the number of data sent.
pub async fn publish(
    client: &aws_sdk_cloudwatch::Client,
    data: &[Datum],
) -> Result<usize, PublishError> {
    let now = aws_sdk_cloudwatch::primitives::DateTime::from(std::time::SystemTime::now());
    let datums: Vec<MetricDatum> = data
        .iter()
        .map(|d| {
            let dimension = match &d.node {
                Some(node) => Dimension::builder().name("Node").value(node),
                None => Dimension::builder().name("Cluster").value("all"),
            };
            MetricDatum::builder()
                .metric_name(d.name)
                .unit(unit(d.unit))
                .value(d.value)
                .timestamp(now)
                .dimensions(dimension.build())
                .build()
        })
        .collect();
    for chunk in datums.chunks(BATCH) {
        client
            .put_metric_data()
            .namespace(NAMESPACE)
            .set_metric_data(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| PublishError(Box::new(e)))?;
    }
    Ok(datums.len())
}
