//! Publishing the node metrics with CloudWatch `PutMetricData`, for
//! `metrics-emitter`, through the signed client of [`crate::aws`] (the query
//! protocol: a form-encoded POST).
//!
//! Not `aws-sdk-cloudwatch`: for this one call its runtime made
//! `metrics-emitter`'s `bootstrap` 6.9 MB against 4.4–5.1 MB for the other
//! functions (the budget is 6 MB). The tests still read what was published
//! back with the SDK, so the request is checked by an independent client.
//! Credentials, region and endpoint come from the standard AWS environment
//! (`AWS_REGION`, the Lambda role's credentials, and
//! `AWS_ENDPOINT_URL_CLOUDWATCH` / `AWS_ENDPOINT_URL` for a local endpoint
//! such as `moto_server`).

use std::time::Duration;

use crate::aws::{AwsClient, AwsError, Service};
use crate::node_metrics::Datum;

/// The CloudWatch namespace of the node metrics.
pub const NAMESPACE: &str = "paycache/Redis";

/// PutMetricData takes at most 1000 data per request.
const BATCH: usize = 1000;

/// Budget of one PutMetricData request.
const TIMEOUT: Duration = Duration::from_secs(5);

const CLOUDWATCH: Service = Service {
    signing_name: "monitoring",
    endpoint_env: "AWS_ENDPOINT_URL_CLOUDWATCH",
    host_prefix: "monitoring",
};

/// A CloudWatch client. The HTTPS client (and the system's trusted roots it
/// loads, a few milliseconds) is built at the first publish, not at init:
/// the function's cold start does not pay for it.
#[derive(Debug, Clone, Default)]
pub struct CloudWatch {
    client: std::sync::Arc<std::sync::OnceLock<Result<AwsClient, AwsError>>>,
}

impl CloudWatch {
    fn aws(&self) -> Result<&AwsClient, AwsError> {
        self.client
            .get_or_init(|| AwsClient::from_env(TIMEOUT))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Builds nothing yet (see [`CloudWatch`]); a missing `AWS_REGION` is
/// reported by the first publish.
pub fn client() -> CloudWatch {
    CloudWatch::default()
}

#[derive(Debug, thiserror::Error)]
#[error("CloudWatch PutMetricData failed")]
pub struct PublishError(#[source] pub AwsError);

/// CloudWatch's unit names (the ones the node metrics use).
fn unit(name: &str) -> &'static str {
    match name {
        "Percent" => "Percent",
        "Milliseconds" => "Milliseconds",
        "Count/Second" => "Count/Second",
        "Count" => "Count",
        "Bytes" => "Bytes",
        _ => "None",
    }
}

/// The form body of one PutMetricData request.
fn request_body(data: &[&Datum], timestamp: &str) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", "PutMetricData")
        .append_pair("Version", "2010-08-01")
        .append_pair("Namespace", NAMESPACE);
    for (i, d) in data.iter().enumerate() {
        let m = format!("MetricData.member.{}", i + 1);
        let (dimension, value) = match &d.node {
            Some(node) => ("Node", node.as_str()),
            None => ("Cluster", "all"),
        };
        form.append_pair(&format!("{m}.MetricName"), d.name)
            .append_pair(&format!("{m}.Unit"), unit(d.unit))
            .append_pair(&format!("{m}.Value"), &d.value.to_string())
            .append_pair(&format!("{m}.Timestamp"), timestamp)
            .append_pair(&format!("{m}.Dimensions.member.1.Name"), dimension)
            .append_pair(&format!("{m}.Dimensions.member.1.Value"), value);
    }
    form.finish()
}

/// Publishes `data`: per node with dimension `Node`, cluster-wide with
/// `Cluster = all`. Values CloudWatch cannot take (NaN, infinities) are
/// left out. Returns the number of data sent.
pub async fn publish(cloudwatch: &CloudWatch, data: &[Datum]) -> Result<usize, PublishError> {
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|_| PublishError(AwsError::Signing))?;
    let finite: Vec<&Datum> = data.iter().filter(|d| d.value.is_finite()).collect();
    let client = cloudwatch.aws().map_err(PublishError)?;
    for chunk in finite.chunks(BATCH) {
        client
            .post(
                CLOUDWATCH,
                "application/x-www-form-urlencoded; charset=utf-8",
                None,
                request_body(chunk, &timestamp).into(),
            )
            .await
            .map_err(PublishError)?;
    }
    Ok(finite.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_body_names_every_member() {
        let d = [
            Datum {
                name: "CacheHitRate",
                unit: "Percent",
                value: 97.5,
                node: None,
            },
            Datum {
                name: "Evictions",
                unit: "Count",
                value: 3.0,
                node: Some("10.0.0.1:6379".into()),
            },
        ];
        let refs: Vec<&Datum> = d.iter().collect();
        let body = request_body(&refs, "2026-11-26T00:00:00Z");
        assert!(
            body.starts_with("Action=PutMetricData&Version=2010-08-01&Namespace=paycache%2FRedis")
        );
        assert!(body.contains("MetricData.member.1.Value=97.5"));
        assert!(body.contains("MetricData.member.1.Dimensions.member.1.Name=Cluster"));
        assert!(body.contains("MetricData.member.2.Dimensions.member.1.Value=10.0.0.1%3A6379"));
        assert!(body.contains("MetricData.member.2.Unit=Count"));
    }
}
