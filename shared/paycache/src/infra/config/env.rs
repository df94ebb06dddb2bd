//! Reading the environment: set-but-empty is unset, numbers within their
//! ranges, durations, flags, and Secrets Manager ARNs — each failure naming
//! its variable.

use super::ConfigError;
use std::fmt;
use std::time::Duration;

/// A Secrets Manager secret ARN (`arn:<partition>:secretsmanager:...`).
pub(super) fn secret_arn(
    env: &Env<'_>,
    variable: &'static str,
) -> Result<Option<String>, ConfigError> {
    match env.get(variable) {
        None => Ok(None),
        Some(arn) => {
            let parts: Vec<&str> = arn.splitn(7, ':').collect();
            let ok = arn.len() <= 2048
                && parts.len() == 7
                && parts[0] == "arn"
                && parts[1].starts_with("aws")
                && parts[2] == "secretsmanager"
                && parts[5] == "secret"
                && !parts[6].is_empty()
                && arn.bytes().all(|b| b.is_ascii_graphic());
            if ok {
                Ok(Some(arn))
            } else {
                Err(ConfigError::new(
                    variable,
                    "must be a Secrets Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)",
                ))
            }
        }
    }
}

pub(super) struct Env<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// A set but empty variable counts as unset, as in most shells' `${X:-}`.
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    pub(super) fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.get(name)
            .ok_or_else(|| ConfigError::new(name, "is required but not set"))
    }

    pub(super) fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        match self.get(name).as_deref().map(str::trim) {
            None | Some("") | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(ConfigError {
                variable: name,
                problem: "must be `true` or `false`".into(),
            }),
        }
    }

    pub(super) fn number<T>(
        &self,
        name: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(raw) = self.get(name) else {
            return Ok(default);
        };
        match raw.trim().parse::<T>() {
            Ok(v) if v >= min && v <= max => Ok(v),
            _ => Err(ConfigError::new(
                name,
                format!("must be a whole number from {min} to {max}"),
            )),
        }
    }

    pub(super) fn millis(
        &self,
        name: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        self.number(name, default, min, max)
            .map(Duration::from_millis)
    }

    /// TTLs: 1 second to 30 days.
    pub(super) fn secs(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.number(name, default, 1, 30 * 24 * 3600)
            .map(Duration::from_secs)
    }
}
