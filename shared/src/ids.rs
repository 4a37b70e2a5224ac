//! Newtypes for identifiers that are easy to confuse.
//!
//! Precoro documents have an internal `id` and a company-visible `idn`; single-document paths use the
//! idn while payments reference the internal id (specs/precoro.md §3). Exact keys are GUIDs and
//! divisions are integers (specs/exact-online.md §1).

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

int_id!(
    /// Precoro's internal document or master-data id.
    PrecoroId
);
int_id!(
    /// Precoro's company-visible document number, used in single-document paths.
    PrecoroIdn
);
int_id!(
    /// An Exact Online division (administration).
    Division
);

/// A company this service syncs, as named in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub String);

impl TenantId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TenantId {
    fn from(s: &str) -> Self {
        TenantId(s.to_string())
    }
}

/// A random (v4) UUID from the thread-local CSPRNG. `Uuid::new_v4` asks the kernel for every id
/// (one `getrandom` syscall each); event ids and lease tokens are minted per message, so they come
/// from here.
pub fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// An Exact Online entity key. Always stored lowercase, without braces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExactGuid(pub uuid::Uuid);

impl ExactGuid {
    pub fn new_v4() -> Self {
        ExactGuid(uuid::Uuid::new_v4())
    }

    /// The OData literal form, `guid'…'`.
    pub fn odata(&self) -> String {
        format!("guid'{}'", self.0)
    }
}

impl std::str::FromStr for ExactGuid {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s
            .trim()
            .trim_start_matches("guid'")
            .trim_end_matches('\'')
            .trim_matches(|c| c == '{' || c == '}');
        uuid::Uuid::parse_str(trimmed).map(ExactGuid)
    }
}

impl fmt::Display for ExactGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_uuids_are_version_4_and_distinct() {
        let a = random_uuid();
        let b = random_uuid();
        assert_eq!(a.get_version(), Some(uuid::Version::Random));
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, b);
    }

    #[test]
    fn exact_guid_parses_odata_and_braced_forms() {
        let plain: ExactGuid = "1b0b1d8e-5d3a-4e0a-9c1e-0d2f3a4b5c6d".parse().unwrap();
        let odata: ExactGuid = "guid'1B0B1D8E-5D3A-4E0A-9C1E-0D2F3A4B5C6D'"
            .parse()
            .unwrap();
        let braced: ExactGuid = "{1b0b1d8e-5d3a-4e0a-9c1e-0d2f3a4b5c6d}".parse().unwrap();
        assert_eq!(plain, odata);
        assert_eq!(plain, braced);
        assert_eq!(plain.odata(), "guid'1b0b1d8e-5d3a-4e0a-9c1e-0d2f3a4b5c6d'");
        assert!("not-a-guid".parse::<ExactGuid>().is_err());
    }
}
