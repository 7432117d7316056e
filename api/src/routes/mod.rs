//! One module per resource; [`crate::router`] merges them.

pub mod health;
pub mod jobs;
pub mod kinds;
pub mod openapi;
pub mod periodic;
pub mod stats;
