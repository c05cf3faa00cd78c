//! Pure planning: taper schedules and follow-up dates.

pub mod schedule;
pub mod taper;
