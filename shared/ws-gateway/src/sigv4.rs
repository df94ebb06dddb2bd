//! The management API's authentication, as API Gateway's: every request
//! must carry an AWS Signature Version 4 made with the credentials the
//! gateway was started with (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`,
//! which `make run` generates per run and gives to the functions too).
//! Deployed, the same requests are authorized by IAM
//! (`execute-api:ManageConnections`).
//!
//! Verification re-signs the request with `aws-sigv4` — the signer the AWS
//! SDK itself uses — over exactly the headers the client listed in
//! `SignedHeaders`, at the client's `X-Amz-Date`, and compares the
//! signatures. A date more than five minutes off is refused, as AWS does.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use axum::http::HeaderMap;

/// Credentials a signature must be made with.
#[derive(Clone)]
pub struct Expected {
    access_key_id: String,
    secret: String,
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expected")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Expected {
    /// Signatures must be made with this key pair.
    pub fn new(access_key_id: &str, secret: &str) -> Self {
        Self {
            access_key_id: access_key_id.to_owned(),
            secret: secret.to_owned(),
        }
    }

    /// From `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, when both are set.
    pub fn from_env() -> Option<Self> {
        let id = std::env::var("AWS_ACCESS_KEY_ID").ok()?;
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok()?;
        (!id.trim().is_empty() && !secret.trim().is_empty())
            .then(|| Self::new(id.trim(), secret.trim()))
    }
}

/// Why a request was refused (the gateway answers 403 with the reason, as
/// API Gateway's `InvalidSignatureException` / `MissingAuthenticationToken`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No `Authorization` header, or not SigV4.
    Missing,
    /// Another access key id.
    UnknownKey,
    /// `X-Amz-Date` missing, malformed or more than five minutes off.
    Date,
    /// The signature does not match.
    Signature,
}

impl Refused {
    /// The message, as API Gateway words it.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "Missing Authentication Token",
            Self::UnknownKey => "The security token included in the request is invalid.",
            Self::Date => "Signature expired or not yet valid.",
            Self::Signature => {
                "The request signature we calculated does not match the signature you provided."
            }
        }
    }
}

struct Parsed<'a> {
    access_key_id: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse(authorization: &str) -> Option<Parsed<'_>> {
    let rest = authorization.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let mut scope = credential?.split('/');
    let access_key_id = scope.next()?;
    let _date = scope.next()?;
    let region = scope.next()?;
    let service = scope.next()?;
    Some(Parsed {
        access_key_id,
        region,
        service,
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    })
}

fn parse_amz_date(raw: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let at = time::PrimitiveDateTime::parse(raw, &format)
        .ok()?
        .assume_utc();
    let secs = u64::try_from(at.unix_timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Verifies the request's SigV4 signature; `uri` is the path and query as
/// received.
pub fn verify(
    expected: &Expected,
    method: &str,
    uri: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Refused> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let parsed = header("authorization")
        .and_then(parse)
        .ok_or(Refused::Missing)?;
    if parsed.access_key_id != expected.access_key_id {
        return Err(Refused::UnknownKey);
    }
    let at = header("x-amz-date")
        .and_then(parse_amz_date)
        .ok_or(Refused::Date)?;
    let skew = match SystemTime::now().duration_since(at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > Duration::from_secs(300) {
        return Err(Refused::Date);
    }
    let mut signed = Vec::new();
    for name in &parsed.signed_headers {
        let value = header(name).ok_or(Refused::Signature)?;
        signed.push((*name, value));
    }
    let host = header("host").ok_or(Refused::Signature)?;
    let url = format!("http://{host}{uri}");
    let request = SignableRequest::new(method, url, signed.into_iter(), SignableBody::Bytes(body))
        .map_err(|_| Refused::Signature)?;
    let identity = Credentials::new(
        &expected.access_key_id,
        &expected.secret,
        None,
        None,
        "ws-gateway",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(parsed.region)
        .name(parsed.service)
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| Refused::Signature)?
        .into();
    let (_, ours) = sign(request, &params)
        .map_err(|_| Refused::Signature)?
        .into_parts();
    // Compared in constant time: equal length and every byte.
    let (a, b) = (ours.as_bytes(), parsed.signature.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(Refused::Signature)
    }
}
