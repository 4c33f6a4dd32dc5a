//! Durations in config files written the way people write them: `90s`,
//! `1h`, `24h 30m` (humantime syntax).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `#[serde(with = "signet_runtime::duration")]` for a `Duration` field.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// `#[serde(with = "signet_runtime::duration::option")]` for `Option<Duration>`.
pub mod option {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(None),
            Some(text) => humantime::parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Sample {
        #[serde(with = "crate::duration")]
        ttl: Duration,
        #[serde(default, with = "crate::duration::option")]
        hint: Option<Duration>,
    }

    #[test]
    fn parses_human_durations_and_rejects_bare_numbers() {
        let sample: Sample = serde_yaml::from_str("ttl: 1h 30m\nhint: 90s\n").unwrap();
        assert_eq!(sample.ttl, Duration::from_secs(5400));
        assert_eq!(sample.hint, Some(Duration::from_secs(90)));
        // A bare number has no unit: refused rather than guessed.
        let error = serde_yaml::from_str::<Sample>("ttl: 10\n").err().unwrap();
        assert!(error.to_string().contains("time unit needed"), "{error}");
        assert!(serde_yaml::from_str::<Sample>("ttl: soon\n").is_err());
    }
}
