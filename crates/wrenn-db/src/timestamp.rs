//! [`Ts`]: a UTC timestamp as both backends store it.
//!
//! Postgres keeps `TIMESTAMPTZ` (microsecond precision). SQLite has no time type, so
//! every timestamp is TEXT in exactly one format, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, which
//! makes string comparison (`<`, `ORDER BY`) chronological. Values are truncated to
//! microseconds on the way in, so both backends return exactly what was stored.

use chrono::{DateTime, Datelike, SubsecRound, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

/// The one SQLite text format (fixed width, so lexicographic = chronological).
const SQLITE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// A UTC timestamp truncated to microseconds; binds and decodes on both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ts(DateTime<Utc>);

impl Ts {
    /// The current time.
    pub(crate) fn now() -> Self {
        Self::from(Utc::now())
    }

    /// The wrapped time.
    pub(crate) fn get(self) -> DateTime<Utc> {
        self.0
    }

    fn sqlite_text(self) -> Result<String, BoxDynError> {
        // Four-digit years only: anything else would break the fixed-width ordering.
        if !(0..=9999).contains(&self.0.year()) {
            return Err(format!("timestamp {} is outside years 0000-9999", self.0).into());
        }
        Ok(self.0.format(SQLITE_FORMAT).to_string())
    }
}

impl From<DateTime<Utc>> for Ts {
    fn from(t: DateTime<Utc>) -> Self {
        Self(t.trunc_subsecs(6))
    }
}

impl From<Ts> for DateTime<Utc> {
    fn from(t: Ts) -> Self {
        t.0
    }
}

impl Type<Sqlite> for Ts {
    fn type_info() -> SqliteTypeInfo {
        <str as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <str as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for Ts {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <String as Encode<'q, Sqlite>>::encode(self.sqlite_text()?, buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Ts {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<'r, Sqlite>>::decode(value)?;
        let t = DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("invalid stored timestamp {text:?}: {e}"))?;
        Ok(Self::from(t.with_timezone(&Utc)))
    }
}

impl Type<Postgres> for Ts {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Ts {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<'_, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Ts {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<'r, Postgres>>::decode(value).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn sqlite_text_is_fixed_width_and_ordered() {
        let a = Ts::from(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap());
        let b = Ts::from(a.get() + chrono::Duration::microseconds(1));
        let (ta, tb) = (a.sqlite_text().unwrap(), b.sqlite_text().unwrap());
        assert_eq!(ta, "2026-01-02T03:04:05.000000Z");
        assert_eq!(tb, "2026-01-02T03:04:05.000001Z");
        assert!(ta < tb);
    }

    #[test]
    fn nanoseconds_are_truncated() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(1_999);
        assert_eq!(Ts::from(t).get().timestamp_subsec_nanos(), 1_000);
    }

    #[test]
    fn years_beyond_four_digits_are_refused() {
        let t = Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap();
        assert!(Ts::from(t).sqlite_text().is_err());
    }
}
