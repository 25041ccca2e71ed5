//! Calibration: streaming statistics of activations and the methods that
//! turn them into INT8 ranges.

pub mod histogram;
