//! The user id newtype: it always comes from a verified token (or a service caller naming a user).

use std::fmt;

/// A Nexus Cards user id (the token's `sub`). Non-empty, at most 128 bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

/// Why a string is not a user id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserIdError {
    #[error("user id is empty")]
    Empty,
    #[error("user id is longer than 128 bytes")]
    TooLong,
    #[error("user id contains control characters")]
    ControlCharacters,
}

impl UserId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: impl Into<String>) -> Result<Self, UserIdError> {
        let raw = raw.into();
        if raw.trim().is_empty() {
            return Err(UserIdError::Empty);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(UserIdError::TooLong);
        }
        if raw.chars().any(char::is_control) {
            return Err(UserIdError::ControlCharacters);
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ordinary_ids_and_refuses_bad_ones() {
        assert_eq!(
            UserId::parse("user-42").map(|u| u.to_string()),
            Ok("user-42".to_string())
        );
        assert_eq!(UserId::parse("  "), Err(UserIdError::Empty));
        assert_eq!(UserId::parse("a".repeat(129)), Err(UserIdError::TooLong));
        assert_eq!(UserId::parse("a\nb"), Err(UserIdError::ControlCharacters));
    }
}
