//! Results: the `summary.json` document, its human rendering, the HdrHistogram interval log
//! and JUnit output. Reads finished figures; never touches sockets or clocks.

pub mod hlog;
pub mod junit;
pub mod plan;
pub mod summary;
pub mod text;

pub use summary::{Outcome, Summary};
