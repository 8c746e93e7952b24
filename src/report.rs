//! Results: the `summary.json` document, its human rendering, the HdrHistogram interval log,
//! JUnit output, the HTML report and run-to-run comparison. Reads finished figures; never touches sockets or clocks.

pub mod chart;
pub mod compare;
pub mod hlog;
pub mod html;
pub mod intervals;
pub mod junit;
pub mod summary;
pub mod text;

pub use summary::{Outcome, Summary};
